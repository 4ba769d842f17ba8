"""Export to the NOCS CAMERA layout that category-level pose estimators read unchanged.

Layout (``<out>/``), as the NOCS release (Wang et al., CVPR 2019, github.com/hughw19/NOCS_CVPR2019)
lays out CAMERA and its loader (``dataset.py``) reads it:

- ``<split>/<scene:05d>/<idx:04d>_color.png``: the synthesized image (render's ``shade.png`` for
  render shards), resized to the annotation size if painted at another size.
- ``_coord.png``: RGB = (x, y, 1 - z) of the NOCS coordinates shifted to [0, 1], times 255 (the
  release stores z flipped; its loader reads BGR, reorders to RGB, divides by 255 and undoes the
  flip), each object instance's pixels in its own NOCS frame; 0 off the visible object instances.
- ``_depth.png``: uint16 millimetres, 0 = no surface (hand pixels keep the hand's depth).
- ``_mask.png``: uint8 instance ids, 255 background: object instance n (1-based, in the order of
  :func:`hoigen.data.contract.sample_instances`: the grasped object is 1, distractor k is k + 2) where
  it is visible; hand and table pixels are 255 like the background, so the hand and the table are
  occluders the loader never sees as objects (the table is not exported as an object).
- ``_meta.txt``: one line per object instance, ``inst_id cls_id synset model_id`` in inst_id order
  1..N (the CAMERA form; the loader reads line ``inst_id - 1`` for an instance's size, drops instances
  with no pixel in the mask, and finds the model at ``obj_models/<split>/<synset>/<model_id>/model.obj``,
  written for every instance listed). Class ids of the
  release: BG 0, bottle 1, bowl 2, camera 3, can 4, laptop 5, mug 6. **Extension:** objects of other
  categories get class 0 (the release's loader drops class-0 instances, as it does its own
  distractors) and synset ``hoigen-<category>``; ``classes.json`` gives them ids from 7 on.
- ``_hand.json`` (hoigen's side file): MANO parameters, 21 joints in 3D (camera frame, metres) and 2D
  (pixels) with visibility.
- ``_camera.json`` (hoigen's side file): this image's intrinsics ``K`` (3x3, pixels), ``width``,
  ``height`` (the release's ``detect_eval.py`` hard-codes the CAMERA K, fx = fy = 577.5,
  cx = 319.5, cy = 239.5 at 640x480; only ``--camera nocs-camera`` renders match it).
- Scenes hold at most 10 images (the CAMERA loader reads ``0000``..``0009`` per folder); one scene is
  up to 10 consecutive frames of one (object, grasp, view) trajectory, numbered from 0 per split.
- ``obj_models/<split>/<synset>/<model_id>/model.obj``: the mesh in its NOCS frame (bounding box
  centred, diagonal 1, y up) **with z negated**, as the release stores CAMERA models: its loader
  (and object-deformnet's preprocessing) negate z when reading them, which gives back the NOCS frame
  of the coord maps, so ``coord = (x, y, -z_file) + 0.5``. Read without the flip, an asymmetric model
  (camera, laptop) is the mirror image of the object. Faces are reversed with the flip, so their
  normals still point out. ``bbox.txt`` beside it: two rows, the file's max then min corner (the
  loader takes ``bbox[0] - bbox[1]`` as the instance's size).
- ``gts/<split>/results_<split>_<scene:05d>_<idx:04d>.pkl``: the per-image ground-truth pickle of the
  release's evaluation (``detect_eval.py`` reads ``gt_RTs`` and ``handle_visibility`` from it); keys
  ``image_path``, ``gt_class_ids`` (N,), ``gt_bboxes`` (N,4 y1 x1 y2 x2), ``gt_RTs`` (N,4,4 with s*R
  in the rotation block, metres), ``gt_scales`` (N,3 NOCS box extents), ``handle_visibility`` (N,),
  for the visible instances (at least one pixel in ``_mask.png``, as the release's loader keeps them)
  of the six NOCS classes, in inst_id order, and (hoigen's addition) ``K`` (3,3), the image's
  intrinsics. ``handle_visibility`` is 1 except for a mug whose handle shows less than
  ``HANDLE_VISIBLE`` of its surface (:func:`hoigen.export.common.handle_share`): ``detect_eval``
  then scores that mug as symmetric about y, as the release does.
- ``gts/<split>.json``: every visible instance of every image (any class) as a ``hoigen eval pose``
  file (:mod:`hoigen.pose.files`); mugs carry ``handle_visible`` and ``handle_share``.
- ``val/``: the release's training script always reads a CAMERA ``val/`` folder; it is written
  with ``--val-fraction`` > 0, and an export without one logs a warning saying so.
- ``<split>_list.txt``: one ``<split>/<scene>/<idx>`` per image; ``scenes.json``: scene -> hoigen
  keys; ``classes.json``: class name -> id.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.codec import encode_field
from hoigen.data.schema import Sample
from hoigen.data.shards import member_bytes
from hoigen.errors import HoigenError
from hoigen.export.common import (
    ImageSlot,
    ObjectInstance,
    bbox_yxyx,
    hand_record,
    handle_share,
    nocs_size,
    nocs_to_cam,
    nocs_vertices,
    object_instances,
    plan_images,
)
from hoigen.objects import ObjectAsset
from hoigen.pose.files import instance, write_pose_file

NOCS_CLASSES = ("BG", "bottle", "bowl", "camera", "can", "laptop", "mug")
NOCS_CLASS_IDS = {name: i for i, name in enumerate(NOCS_CLASSES) if i}
SHAPENET_SYNSETS = {
    "bottle": "02876657",
    "bowl": "02880940",
    "camera": "02942699",
    "can": "02946921",
    "laptop": "03642806",
    "mug": "03797390",
}
OBJECT_INSTANCE = 1  # the grasped object's instance id; distractor k is k + 2
MASK_BACKGROUND = 255
HANDLE_VISIBLE = 0.1  # share of a mug handle's surface that must be seen for handle_visibility = 1
log = logging.getLogger("hoigen.export")


def synset_of(category: str) -> str:
    return SHAPENET_SYNSETS.get(category, f"hoigen-{category}")


def coord_png(nocs: np.ndarray, object_mask: np.ndarray) -> np.ndarray:
    """hoigen's ``nocs.png`` ((xyz + 0.5) * 255) to the release's ``_coord.png`` (z flipped)."""
    coord = nocs.copy()
    coord[..., 2] = 255 - coord[..., 2]
    coord[~object_mask] = 0
    return coord


def decode_coord_png(coord: np.ndarray) -> np.ndarray:
    """Inverse of :func:`coord_png` on RGB arrays: NOCS coordinates in [-0.5, 0.5]."""
    xyz = np.asarray(coord, np.float64) / 255.0
    xyz[..., 2] = 1.0 - xyz[..., 2]
    return xyz - 0.5


def mask_png(insts: list[ObjectInstance]) -> np.ndarray:
    """The release's ``_mask.png``: each instance's number on its visible pixels, 255 elsewhere."""
    mask = np.full(insts[0].visible.shape, MASK_BACKGROUND, np.uint8)
    for inst in insts:
        mask[inst.visible] = inst.number
    return mask


def meta_line(category: str, model_id: str, inst_id: int = OBJECT_INSTANCE) -> str:
    return f"{inst_id} {NOCS_CLASS_IDS.get(category, 0)} {synset_of(category)} {model_id}\n"


def class_table(categories: Iterable[str]) -> dict[str, int]:
    """The release's ids, then hoigen's extension ids (7, 8, ...) for other categories, sorted."""
    table = {name: i for i, name in enumerate(NOCS_CLASSES)}
    for cat in sorted(set(categories) - set(table)):
        table[cat] = len(table)
    return table


def model_obj(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """OBJ text of a NOCS-frame mesh in the release's CAMERA convention: z negated, faces reversed."""
    lines = ["# hoigen object in its NOCS frame (bbox centred, diagonal 1, y up), z negated as NOCS CAMERA models\n"]
    lines += [f"v {x:.6f} {y:.6f} {-z:.6f}\n" for x, y, z in vertices]
    lines += [f"f {a + 1} {c + 1} {b + 1}\n" for a, b, c in faces]
    return "".join(lines).encode()


def load_model_obj(path: Path) -> np.ndarray:
    """Vertices of a ``model.obj`` read the release's way (z negated back): NOCS coordinates."""
    v = np.array([[float(x) for x in line.split()[1:4]] for line in open(path) if line.startswith("v ")])
    return v * np.array([1.0, 1.0, -1.0])


def write_model(out_dir: Path, split: str, asset: ObjectAsset) -> None:
    folder = Path(out_dir) / "obj_models" / split / synset_of(asset.category) / asset.id
    folder.mkdir(parents=True, exist_ok=True)
    v = nocs_vertices(asset)
    atomic_write_bytes(folder / "model.obj", model_obj(v, np.asarray(asset.mesh.faces)))
    f = v * np.array([1.0, 1.0, -1.0])  # the file's frame
    atomic_write_bytes(
        folder / "bbox.txt",
        f"{' '.join(f'{x:.6f}' for x in f.max(0))}\n{' '.join(f'{x:.6f}' for x in f.min(0))}\n".encode(),
    )


def camera_record(ann: dict[str, Any]) -> dict[str, Any]:
    cam = ann["camera"]
    return {"K": np.asarray(cam["K"], np.float64).round(9).tolist(), "width": cam["width"], "height": cam["height"]}


def export_sample(sample: Sample, image_dir: Path, idx: int, insts: list[ObjectInstance]) -> None:
    """Write one image's files."""
    ann = sample["ann.json"]
    seg = sample["seg.png"]
    h, w = seg.shape
    color = sample["image.jpg"] if "image.jpg" in sample else sample.get("shade.png")  # decode one of them
    if color.shape[:2] != (h, w):
        color = cv2.resize(color, (w, h), interpolation=cv2.INTER_CUBIC)
    visible = np.logical_or.reduce([inst.visible for inst in insts])
    stem = image_dir / f"{idx:04d}"
    meta = "".join(meta_line(i.record["category"], i.asset.id, i.number) for i in insts)
    files = {
        "_color.png": encode_field("x.png", color),
        "_coord.png": encode_field("x.png", coord_png(sample["nocs.png"], visible)),
        "_depth.png": member_bytes(sample, "depth.png"),  # the shard's bytes (same encoder)
        "_mask.png": encode_field("x.png", mask_png(insts)),
        "_meta.txt": meta.encode(),
        "_hand.json": json.dumps(hand_record(ann), indent=1).encode(),
        "_camera.json": json.dumps(camera_record(ann), indent=1).encode(),
    }
    for suffix, data in files.items():
        atomic_write_bytes(stem.with_name(stem.name + suffix), data)


def gt_pickle(slot: ImageSlot, insts: list[dict[str, Any]], boxes: list[list[int]], K: np.ndarray) -> bytes:
    """The release's per-image ground truth (instances of the six NOCS classes only)."""
    keep = [i for i, inst in enumerate(insts) if inst["class"] in NOCS_CLASS_IDS]
    rts = []
    for i in keep:
        m = np.eye(4)
        m[:3, :3] = insts[i]["s"] * np.asarray(insts[i]["R"])
        m[:3, 3] = insts[i]["t"]
        rts.append(m)
    data = {
        "image_path": slot.name,
        "gt_class_ids": np.array([NOCS_CLASS_IDS[insts[i]["class"]] for i in keep], np.int32),
        "gt_bboxes": np.array([boxes[i] for i in keep], np.int32).reshape(-1, 4),
        "gt_RTs": np.array(rts, np.float64).reshape(-1, 4, 4),
        "gt_scales": np.array([insts[i]["size"] for i in keep], np.float32).reshape(-1, 3),
        "handle_visibility": np.array([int(insts[i].get("handle_visible", True)) for i in keep], np.int32),
        "K": np.asarray(K, np.float64).reshape(3, 3),
    }
    return pickle.dumps(data, protocol=2)


def check_renders(sample: Sample) -> None:
    if "seg.png" not in sample:
        raise HoigenError(
            f"{sample.get('__shard__', '?')}: sample {sample['__key__']} has no render passes; "
            "export reads the output of hoigen render or hoigen synthesize"
        )


def export_nocs(
    samples: Iterable[Sample],
    keys: list[str],
    out_dir: Path,
    objects: dict[str, ObjectAsset],
    split: str = "train",
    val_fraction: float = 0.0,
    on_sample: Callable[[], None] | None = None,
) -> int:
    """Write ``samples`` (render or synthesize output) as a NOCS CAMERA-style dataset; returns the count."""
    out_dir = Path(out_dir)
    plan = plan_images(keys, split, val_fraction)
    gts: dict[str, dict[str, list[dict[str, Any]]]] = {}
    models: set[tuple[str, str]] = set()
    count = 0
    for sample in samples:
        check_renders(sample)
        insts = object_instances(sample, objects)
        slot = plan[sample["__key__"]]
        image_dir = out_dir / slot.split / f"{slot.scene:05d}"
        image_dir.mkdir(parents=True, exist_ok=True)
        export_sample(sample, image_dir, slot.index, insts)
        ann = sample["ann.json"]
        records, boxes = [], []
        for obj in insts:
            models.add((slot.split, obj.asset.id))
            if not obj.visible.any():
                continue  # as the release's loader: an instance without a pixel in the mask is no ground truth
            R, t, s = nocs_to_cam(ann, obj.record)
            boxes.append(bbox_yxyx(obj.visible))
            handle: dict[str, Any] = {"handle_visible": True}
            if obj.asset.category == "mug":
                share = handle_share(sample, obj.asset, obj.record)
                handle = {"handle_visible": share >= HANDLE_VISIBLE, "handle_share": round(share, 4)}
            cat = obj.record["category"]
            records.append(
                instance(cat, R, t, s, nocs_size(obj.asset), score=1.0, bbox=boxes[-1], model=obj.asset.id, **handle)
            )
        gts.setdefault(slot.split, {})[slot.name] = records
        pkl = out_dir / "gts" / slot.split / f"results_{slot.split}_{slot.scene:05d}_{slot.index:04d}.pkl"
        pkl.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(pkl, gt_pickle(slot, records, boxes, np.asarray(ann["camera"]["K"])))
        count += 1
        if on_sample is not None:
            on_sample()
    for model_split, obj_id in sorted(models):
        write_model(out_dir, model_split, objects[obj_id])
    by_split: dict[str, list[str]] = {}
    scenes: dict[str, list[str]] = {}
    for key, slot in sorted(plan.items(), key=lambda kv: kv[1].name):
        by_split.setdefault(slot.split, []).append(slot.name)
        scenes.setdefault(f"{slot.split}/{slot.scene:05d}", []).append(key)
    for name, lines in by_split.items():
        atomic_write_bytes(out_dir / f"{name}_list.txt", "".join(f"{line}\n" for line in lines).encode())
        write_pose_file(out_dir / "gts" / f"{name}.json", gts.get(name, {}))
    if "val" not in by_split:
        log.warning(
            "export: %s has no val/ split (--val-fraction %s); the NOCS release's training script reads val/: "
            "export with --val-fraction > 0 (or give it your own val set)",
            out_dir,
            val_fraction,
        )
    atomic_write_bytes(out_dir / "scenes.json", json.dumps(scenes, indent=1, sort_keys=True).encode())
    table = class_table(a.category for a in objects.values())
    atomic_write_bytes(out_dir / "classes.json", json.dumps(table, indent=1).encode())
    return count
