"""The pose file read by ``hoigen eval pose``: one JSON for a whole set of images.

```
{"format": "hoigen-pose-v1",
 "images": {"<image id, e.g. train/00003/0004>": [
    {"class": "mug",            NOCS class name (other categories keep their own name)
     "R": [[..],[..],[..]],     rotation object (NOCS frame) -> camera (OpenCV)
     "t": [x, y, z],            translation, metres, camera frame
     "s": 0.21,                 scale: the object's bounding-box diagonal in metres
     "size": [sx, sy, sz],      bounding-box extents in NOCS units (|size| = 1 for a tight box)
     "score": 1.0,              detection confidence (optional; default 1)
     "handle_visible": true,    mugs only (optional; default true)
     "bbox": [y1, x1, y2, x2]}  2D box in pixels (optional, not used by the metrics)
 ]}}
```

``p_cam = s * R @ p_nocs + t``. ``hoigen export --format nocs`` writes ground truth in this form
(``gts/<split>.json``); a predictor writes its detections in the same form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hoigen.errors import HoigenError

FORMAT = "hoigen-pose-v1"
REQUIRED = ("class", "R", "t", "s", "size")


def instance(cls: str, R: np.ndarray, t: np.ndarray, s: float, size: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "class": cls,
        "R": np.asarray(R, np.float64).round(10).tolist(),
        "t": np.asarray(t, np.float64).round(10).tolist(),
        "s": round(float(s), 10),
        "size": np.asarray(size, np.float64).round(10).tolist(),
        **extra,
    }


def write_pose_file(path: Path, images: dict[str, list[dict[str, Any]]]) -> None:
    from hoigen.data.atomic import atomic_write_bytes

    data = {"format": FORMAT, "images": images}
    atomic_write_bytes(Path(path), json.dumps(data, indent=1, sort_keys=True).encode())


def read_pose_file(path: Path) -> dict[str, list[dict[str, Any]]]:
    """{image id: [instance, ...]} from a pose file, checked field by field."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("gts/*.json")) or sorted(path.glob("*.json"))
        if len(candidates) != 1:
            raise HoigenError(f"{path}: expected exactly one pose JSON (gts/<split>.json) in it; pass the file")
        path = candidates[0]
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HoigenError(f"{path}: pose file not found") from None
    except json.JSONDecodeError as exc:
        raise HoigenError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("images"), dict):
        raise HoigenError(f"{path}: not a {FORMAT} pose file (need {{'format': '{FORMAT}', 'images': {{...}}}})")
    for image, insts in data["images"].items():
        for i, inst in enumerate(insts):
            missing = [k for k in REQUIRED if k not in inst]
            if missing:
                raise HoigenError(f"{path}: image {image} instance {i} lacks {', '.join(missing)}")
            if np.asarray(inst["R"]).shape != (3, 3) or np.asarray(inst["t"]).shape != (3,):
                raise HoigenError(f"{path}: image {image} instance {i}: R must be 3x3 and t length 3")
    return data["images"]
