"""Contact sheets: one PNG that shows what a folder of shards holds.

Each row is one sample, each column one picture field it has (image, shade, normal, seg, skeleton,
nocs, depth), with the key written above the row. By default the rows are grasp frames (the last
frame of each trajectory), spread over the shards.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from hoigen.data.schema import Sample
from hoigen.data.shards import list_shards, read_shard
from hoigen.errors import HoigenError

PREVIEW_FIELDS = ("image.jpg", "shade.png", "normal.png", "seg.png", "skeleton.png", "nocs.png", "depth.png")
SEG_COLOURS = np.array([[0, 0, 0], [230, 180, 140], [70, 130, 230], [120, 200, 90], [200, 90, 200]], np.uint8)


def to_rgb(field: str, value: np.ndarray, tile: int) -> np.ndarray:
    """A field as a ``tile`` x ``tile`` RGB thumbnail (seg coloured, depth normalised)."""
    arr = np.asarray(value)
    if field == "seg.png":
        arr = SEG_COLOURS[np.clip(arr, 0, len(SEG_COLOURS) - 1)]
    elif field == "depth.png":
        valid = arr > 0
        norm = np.zeros(arr.shape, np.uint8)
        if valid.any():
            lo, hi = float(arr[valid].min()), float(arr[valid].max())
            norm[valid] = (255 - 200 * (arr[valid] - lo) / max(hi - lo, 1.0)).astype(np.uint8)
        arr = np.repeat(norm[..., None], 3, axis=2)
    elif arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return cv2.resize(arr.astype(np.uint8), (tile, tile), interpolation=cv2.INTER_AREA)


def contact_sheet(samples: Iterable[Sample], out_png: Path, max_rows: int = 12, tile: int = 128) -> Path:
    """Write a grid of the picture fields of up to ``max_rows`` samples to ``out_png``."""
    rows, label_h = [], 18
    for sample in samples:
        if len(rows) >= max_rows:
            break
        tiles = [to_rgb(f, sample[f], tile) for f in PREVIEW_FIELDS if f in sample]
        if not tiles:
            continue
        row = np.concatenate(tiles, axis=1)
        label = np.full((label_h, row.shape[1], 3), 255, np.uint8)
        text = sample["__key__"] + "  " + " ".join(f.split(".")[0] for f in PREVIEW_FIELDS if f in sample)
        cv2.putText(label, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([label, row], axis=0))
    if not rows:
        raise HoigenError(f"{out_png}: nothing to preview (the shards hold no picture fields)")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    sheet = np.concatenate(rows, axis=0)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return out_png


def grasp_frame_keys(keys: list[str]) -> list[str]:
    """The keys of the last (grasp) frame of each trajectory and view, in the order given.

    Keys are ``{object}_{grasp:04d}_{frame:03d}_{view:02d}`` (grasp stage: no view); a key of another
    shape is kept as it is.
    """
    last: dict[tuple, tuple[int, str]] = {}
    order: list[tuple] = []
    for key in keys:
        parts = key.split("_")
        if len(parts) < 3 or not parts[2].isdigit():
            group, frame = (key,), 0
        else:
            group, frame = (parts[0], parts[1], *parts[3:]), int(parts[2])
        if group not in last:
            order.append(group)
        if group not in last or frame > last[group][0]:
            last[group] = (frame, key)
    return [last[g][1] for g in order]


def spread_samples(folder: Path, max_rows: int, frames: str = "grasp") -> list[Sample]:
    """Up to ``max_rows`` samples spread over all shards of ``folder`` (first of each, then more).

    ``frames="grasp"`` (default) shows each trajectory's last frame, the grasp itself, rather than the
    approach; ``"all"`` spreads over every frame.
    """
    if frames not in ("grasp", "all"):
        raise HoigenError(f"frames must be grasp or all, got {frames!r}")
    shards = list_shards(folder)
    if not shards:
        raise HoigenError(f"{folder}: no shards found (shard-*.tar); point at a stage's output folder")
    per_shard = max(1, -(-max_rows // len(shards)))
    picked: list[Sample] = []
    for shard in shards:
        samples = list(read_shard(shard, fields=PREVIEW_FIELDS))
        if frames == "grasp":
            keep = set(grasp_frame_keys([s["__key__"] for s in samples]))
            samples = [s for s in samples if s["__key__"] in keep]
        step = max(1, len(samples) // per_shard)
        picked.extend(samples[::step][:per_shard])
    return picked[:max_rows]
