"""Export to the NOCS CAMERA-style layout that category-level pose estimators read.

``<out>/<split>/<scene:05d>/<idx:04d>_{color,coord,depth,mask}.png`` and ``_meta.txt``, one scene per
(object, grasp) trajectory, with ``<out>/<split>_list.txt`` naming every image and ``scenes.json``
mapping scene numbers back to hoigen keys. Encodings follow the NOCS release:

- ``_color.png``: the synthesized image (render's ``shade.png`` when exporting render shards),
  resized to the annotation size if the diffusion model painted at another size.
- ``_coord.png``: RGB = (x, y, 1 - z) of NOCS coordinates in [0, 1] times 255 (the release stores z
  flipped; its loader undoes it), 0 outside the object.
- ``_depth.png``: uint16 millimetres.
- ``_mask.png``: instance ids, 255 background; the object is instance 1; hand pixels are 255 too, so
  the hand acts as an occluder for loaders that only know the object classes.
- ``_meta.txt``: ``inst_id cls_id synset model_id`` per instance (class ids of the release:
  BG 0, bottle 1, bowl 2, camera 3, can 4, laptop 5, mug 6; other categories get id 0 and synset
  ``hoigen-<category>``).
- ``_hand.json`` (hoigen's side file): MANO parameters, 21 joints in 3D (camera frame, metres)
  and 2D (pixels) with visibility, for hand-pose users.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.codec import encode_field
from hoigen.data.schema import SEG_OBJECT, Sample, parse_key
from hoigen.errors import HoigenError

NOCS_CLASS_IDS = {"bottle": 1, "bowl": 2, "camera": 3, "can": 4, "laptop": 5, "mug": 6}
SHAPENET_SYNSETS = {
    "bottle": "02876657",
    "bowl": "02880940",
    "camera": "02942699",
    "can": "02946921",
    "laptop": "03642806",
    "mug": "03797390",
}
OBJECT_INSTANCE = 1
MASK_BACKGROUND = 255


def coord_png(nocs: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """hoigen's ``nocs.png`` ((xyz + 0.5) * 255) to the release's ``_coord.png`` (z flipped)."""
    coord = nocs.copy()
    coord[..., 2] = 255 - coord[..., 2]
    coord[~object_mask] = 0
    return coord


def mask_png(seg: np.ndarray) -> np.ndarray:
    mask = np.full(seg.shape, MASK_BACKGROUND, np.uint8)
    mask[seg == SEG_OBJECT] = OBJECT_INSTANCE
    return mask


def meta_line(category: str, model_id: str) -> str:
    cls_id = NOCS_CLASS_IDS.get(category, 0)
    synset = SHAPENET_SYNSETS.get(category, f"hoigen-{category}")
    return f"{OBJECT_INSTANCE} {cls_id} {synset} {model_id}\n"


def hand_record(ann: dict[str, Any]) -> dict[str, Any]:
    """The hand side file: MANO parameters plus joints in the camera frame and in pixels."""
    hand = ann["hand"]
    w2c = np.asarray(ann["camera"]["world_to_cam"], np.float64)
    j3 = np.asarray(hand["joints3d"], np.float64)
    j3_cam = j3 @ w2c[:3, :3].T + w2c[:3, 3]
    return {
        "side": hand["side"],
        "model": hand["model"],
        "global_orient_world": hand["global_orient"],
        "hand_pose": hand["hand_pose"],
        "betas": hand["betas"],
        "transl_world": hand["transl"],
        "world_to_cam": ann["camera"]["world_to_cam"],
        "joints3d_cam": j3_cam.round(6).tolist(),
        "joints2d": hand.get("joints2d"),
        "joints_visible": hand.get("joints_visible"),
    }


def scene_table(keys: Iterable[str]) -> dict[tuple[str, int], int]:
    """Scene numbers for (object, grasp) pairs in sorted order: independent of shard order."""
    pairs = sorted({(p["object"], p["grasp"]) for p in map(parse_key, keys)})
    return {pair: i for i, pair in enumerate(pairs)}


def export_sample(sample: Sample, image_dir: Path, idx: int) -> None:
    ann = sample["ann.json"]
    if "seg.png" not in sample:
        raise HoigenError(
            f"{sample.get('__shard__', '?')}: sample {sample['__key__']} has no render passes; "
            "export reads the output of hoigen render or hoigen synthesize"
        )
    seg = sample["seg.png"]
    h, w = seg.shape
    color = sample.get("image.jpg", sample.get("shade.png"))
    if color.shape[:2] != (h, w):
        color = cv2.resize(color, (w, h), interpolation=cv2.INTER_CUBIC)
    stem = image_dir / f"{idx:04d}"
    files = {
        "_color.png": encode_field("x.png", color),
        "_coord.png": encode_field("x.png", coord_png(sample["nocs.png"], seg == SEG_OBJECT)),
        "_depth.png": encode_field("x.png", sample["depth.png"]),
        "_mask.png": encode_field("x.png", mask_png(seg)),
        "_meta.txt": meta_line(ann["object"]["category"], ann["object"]["id"]).encode(),
        "_hand.json": json.dumps(hand_record(ann), indent=1).encode(),
    }
    for suffix, data in files.items():
        atomic_write_bytes(stem.with_name(stem.name + suffix), data)


def export_nocs(
    samples: Iterable[Sample], keys: list[str], out_dir: Path, split: str = "train", on_sample: Any = None
) -> int:
    """Write ``samples`` (render or synthesize output) as a NOCS-style dataset; returns the count."""
    scenes = scene_table(keys)
    counters: dict[int, list[str]] = {}
    split_dir = Path(out_dir) / split
    by_key: dict[str, tuple[int, int]] = {}
    for key in sorted(keys):
        p = parse_key(key)
        scene = scenes[(p["object"], p["grasp"])]
        by_key[key] = (scene, len(counters.setdefault(scene, [])))
        counters[scene].append(key)
    count = 0
    for sample in samples:
        scene, idx = by_key[sample["__key__"]]
        image_dir = split_dir / f"{scene:05d}"
        image_dir.mkdir(parents=True, exist_ok=True)
        export_sample(sample, image_dir, idx)
        count += 1
        if on_sample is not None:
            on_sample()
    lines = [f"{split}/{scene:05d}/{i:04d}\n" for scene in sorted(counters) for i in range(len(counters[scene]))]
    atomic_write_bytes(Path(out_dir) / f"{split}_list.txt", "".join(lines).encode())
    scene_map = {f"{s:05d}": {"object": o, "grasp": g, "keys": counters[s]} for (o, g), s in scenes.items()}
    atomic_write_bytes(Path(out_dir) / "scenes.json", json.dumps(scene_map, indent=1, sort_keys=True).encode())
    return count
