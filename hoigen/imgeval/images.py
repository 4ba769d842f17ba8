"""``hoigen eval images``: run a hand detector on every image of a stage folder and compare with the labels.

Images: a synthesize folder's ``image.jpg``, ``image_1.jpg``, ... (each painted image), or a render
folder's ``shade.png`` (the plain shaded render, which checks the labels themselves). One row per
image goes to ``eval.parquet`` beside the shards (``key`` and ``shard`` join ``index.parquet``;
``image`` names the member); the summary is returned (and printed by the CLI).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.codec import decode_field
from hoigen.data.index import _table_bytes
from hoigen.data.progress import info
from hoigen.data.shards import list_shards, read_shard
from hoigen.errors import HoigenError
from hoigen.hand.keypoints import HAND_BONES
from hoigen.imgeval.agreement import PCK_THRESHOLDS, Detector, agreement, labelled_joints, pck_name, summarize

EVAL_FILE = "eval.parquet"
SYNTH_IMAGE = re.compile(r"^image(_\d+)?\.jpg$")
RENDER_IMAGE = "shade.png"


def image_fields(members: list[str], field: str | None = None) -> list[str]:
    """Which members of a sample to evaluate: ``field`` if given, else every ``image*.jpg``, else ``shade.png``."""
    if field is not None:
        return [field] if field in members else []
    painted = sorted((m for m in members if SYNTH_IMAGE.match(m)), key=lambda m: (len(m), m))
    if painted:
        return painted
    return [RENDER_IMAGE] if RENDER_IMAGE in members else []


def iter_images(folder: Path, field: str | None = None) -> Iterator[tuple[str, str, str, np.ndarray, dict, Any]]:
    """Yield ``(key, shard, member, image, ann, seg)`` for every evaluated image of a folder's shards."""
    shards = list_shards(folder)
    if not shards:
        raise HoigenError(f"{folder}: no shard-*.tar here; point --in at a render or synthesize output folder")
    for shard in shards:
        for raw in read_shard(shard, decode=False):
            members = [k for k in raw if not k.startswith("__")]
            if "ann.json" not in members:
                raise HoigenError(f"{shard}: sample {raw['__key__']} has no ann.json; is this a hoigen stage folder?")
            ann = decode_field("ann.json", raw["ann.json"], str(shard))
            seg = decode_field("seg.png", raw["seg.png"], str(shard)) if "seg.png" in raw else None
            for member in image_fields(members, field):
                image = decode_field(member, raw[member], str(shard))
                if image.ndim == 2:
                    image = np.repeat(image[:, :, None], 3, axis=2)
                yield raw["__key__"], shard.name, member, np.ascontiguousarray(image[:, :, :3]), ann, seg


def evaluate_folder(
    folder: Path,
    detector: Detector,
    field: str | None = None,
    out: Path | None = None,
    overlays: int = 8,
    quiet: bool = True,
) -> dict[str, Any]:
    """Evaluate every image of ``folder``; writes ``folder/eval.parquet`` (and overlays under ``out``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HoigenError(f"{folder}: not a folder; point --in at a render or synthesize output folder")
    rows: list[dict[str, Any]] = []
    for key, shard, member, image, ann, seg in iter_images(folder, field):
        row = {"key": key, "shard": shard, "image": member}
        row["hand_pixels"] = int(np.count_nonzero(seg == 1)) if seg is not None else -1
        row.update(agreement(image, ann, detector))
        rows.append(row)
        if not quiet and len(rows) % 50 == 0:
            info(f"eval images: {len(rows)} images", quiet)
    if not rows:
        what = field or "image*.jpg or shade.png"
        raise HoigenError(f"{folder}: no sample holds {what}; pass --field with a member the samples have")
    atomic_write_bytes(folder / EVAL_FILE, _table_bytes(rows))
    summary = summarize(rows)
    summary["folder"] = str(folder)
    summary["field"] = field or "auto"
    summary["detector"] = getattr(detector, "name", type(detector).__name__)
    if out is not None:
        summary["overlays"] = [str(p) for p in write_overlays(folder, rows, Path(out), overlays, field)]
    return summary


def _rank(row: dict[str, Any]) -> tuple[float, float]:
    """Sort key, best first: PCK@0.2 (missed = -1), then mean error."""
    score = row[pck_name(PCK_THRESHOLDS[-1])]
    err = row["mean_error_px"]
    return (-(score if score == score else -1.0), err if err == err else float("inf"))


def write_overlays(folder: Path, rows: list[dict[str, Any]], out: Path, count: int, field: str | None) -> list[Path]:
    """Pictures of the ``count`` best and worst images (labelled with a hand): labels green, detection red."""
    candidates = sorted((r for r in rows if r["visible_joints"] > 0), key=_rank)
    if count <= 0 or not candidates:
        return []
    best = candidates[:count]
    worst = candidates[::-1][:count]
    wanted = {(r["key"], r["image"]): r for r in [*best, *worst]}
    pictures: dict[tuple[str, str], np.ndarray] = {}
    for key, _shard, member, image, ann, _seg in iter_images(folder, field):
        if (key, member) in wanted:
            pictures[(key, member)] = _draw(image, ann, wanted[(key, member)])
    out.mkdir(parents=True, exist_ok=True)
    paths, listing = [], []
    for prefix, group in (("best", best), ("worst", worst)):
        for i, r in enumerate(group):
            path = out / f"{prefix}_{i:02d}_{r['key']}_{r['image'].split('.')[0]}.png"
            ok, buf = cv2.imencode(".png", cv2.cvtColor(pictures[(r["key"], r["image"])], cv2.COLOR_RGB2BGR))
            if not ok:
                raise HoigenError(f"{path}: PNG encoding failed")
            atomic_write_bytes(path, buf.tobytes())
            paths.append(path)
            listing.append({**{k: v for k, v in r.items() if k != "joints_pred"}, "picture": path.name})
    atomic_write_bytes(out / "overlays.json", json.dumps(listing, indent=1, default=_json_default).encode())
    return paths


def _json_default(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def _draw(image: np.ndarray, ann: dict[str, Any], row: dict[str, Any]) -> np.ndarray:
    """The image with the labelled skeleton (green, visible joints) and the detected one (red)."""
    canvas = image.copy()
    scale = max(1, int(round(min(canvas.shape[:2]) / 256)))
    gt, visible = labelled_joints(ann)
    _skeleton(canvas, gt, visible, (0, 220, 0), scale)
    pred = row.get("joints_pred")
    if pred is not None:
        _skeleton(canvas, np.asarray(pred), np.ones(len(pred), dtype=bool), (255, 40, 40), scale)
    p = row[pck_name(PCK_THRESHOLDS[-1])]
    text = f"pck@0.2 {p:.2f}" if p == p else "not detected"
    cv2.putText(canvas, text, (4, 14 * scale), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, (255, 255, 0), scale)
    return canvas


def _skeleton(canvas: np.ndarray, pts: np.ndarray, visible: np.ndarray, color: tuple[int, int, int], lw: int) -> None:
    if pts.shape[0] != 21:
        return
    p = np.round(pts).astype(int)
    for a, b in HAND_BONES:
        if visible[a] and visible[b]:
            cv2.line(canvas, tuple(p[a]), tuple(p[b]), color, lw)
    for j in range(21):
        if visible[j]:
            cv2.circle(canvas, tuple(p[j]), lw + 1, color, -1)
