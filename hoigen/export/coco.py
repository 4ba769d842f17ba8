"""Export to COCO (cocodataset.org/#format-data): hand keypoints plus object instance masks, the form
keypoint tools, Detectron2/MMDetection and DexYCB's own toolkit read with ``pycocotools``.

Layout (``<out>/``):

- ``annotations/<split>.json``: one COCO file per split (``--split``, and ``val`` with
  ``--val-fraction``), read with ``pycocotools.coco.COCO(path)``.
- ``images/<split>/<key>.png``: the images (the synthesized image, or render's ``shade.png`` for
  render shards, resized to the annotation size if painted at another size), copied losslessly.

The json:

- ``images``: ``id`` (1.. over the whole export, in split/scene/frame order), ``file_name``
  (``<key>.png``, relative to ``images/<split>/``), ``width``, ``height``; hoigen adds ``key`` and the
  intrinsics ``K`` (3x3, pixels).
- ``categories``: id 1 ``hand`` (supercategory ``hand``) with ``keypoints``, the 21 joint names in
  the common order (wrist, then thumb, index, middle, ring, pinky from base to tip) and
  ``skeleton``, its 20 bones as 1-based index pairs; then one category per object category of the
  objects table (sorted, ids 2..; supercategory ``object``).
- ``annotations``: per image, the hand (category 1) when any hand pixel is visible, with
  ``keypoints`` ``[x1, y1, v1, ...]`` (pixel centres at integer coordinates, as the renderer's
  ``joints2d``), ``v`` = 2 where ``joints_visible`` (in the image, not hidden by the object, not
  self-occluded), 1 where the joint projects into the image but is hidden (by an object or the
  hand itself), 0 (and x = y = 0) outside the image; ``num_keypoints`` = the count of v > 0; then
  one annotation per object instance with any visible pixel, in the order of
  :func:`hoigen.data.contract.sample_instances` (the grasped object, then the distractors), category
  = its object category (with 21 zero keypoints and ``num_keypoints`` 0, so COCOeval's keypoint pass
  over all categories ignores it). All carry ``segmentation`` (RLE of the visible mask: ``seg.png`` ==
  the instance's seg id), ``area`` (its pixel count), ``bbox`` ``[x, y, w, h]`` of it, and ``iscrowd``
  0; hoigen adds ``object_id`` or ``hand_side``. The table is not an object: it has no annotation.

COCO's keypoint evaluation needs one OKS sigma per keypoint (its defaults are for 17 body joints):
``COCOeval.params.kpt_oks_sigmas`` must be set to 21 values, e.g. :data:`HAND_OKS_SIGMAS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.codec import encode_field
from hoigen.data.contract import SEG_HAND
from hoigen.data.schema import Sample
from hoigen.export.common import ObjectInstance, object_instances, plan_images
from hoigen.export.nocs import check_renders
from hoigen.hand.keypoints import HAND_BONES, HAND_JOINT_NAMES
from hoigen.objects import ObjectAsset

HAND_CATEGORY = 1
HAND_OKS_SIGMAS = np.full(21, 0.025)  # a suggestion for COCOeval (hands have no published 21-joint sigmas)


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a boolean (H,W) mask, JSON-ready (``counts`` as text)."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": encoded["counts"].decode("ascii")}


def box_xywh(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def categories(objects: dict[str, ObjectAsset]) -> list[dict[str, Any]]:
    """The hand keypoint category, then one per object category (sorted)."""
    hand = {
        "id": HAND_CATEGORY,
        "name": "hand",
        "supercategory": "hand",
        "keypoints": list(HAND_JOINT_NAMES),
        "skeleton": [[a + 1, b + 1] for a, b in HAND_BONES],
    }
    names = sorted({a.category for a in objects.values()})
    return [hand, *({"id": i + 2, "name": n, "supercategory": "object"} for i, n in enumerate(names))]


def hand_keypoints(ann: dict[str, Any]) -> list[float]:
    """COCO ``[x, y, v] * 21`` of the hand (see the module docstring for v)."""
    hand, cam = ann["hand"], ann["camera"]
    w, h = int(cam["width"]), int(cam["height"])
    out: list[float] = []
    for (x, y), seen in zip(hand["joints2d"], hand["joints_visible"], strict=True):
        inside = bool(np.isfinite([x, y]).all()) and -0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5
        v = 2 if seen and inside else 1 if inside else 0
        out += [round(float(x), 2), round(float(y), 2), v] if v else [0.0, 0.0, 0]
    return out


def annotations(
    sample: Sample, image_id: int, cat_ids: dict[str, int], insts: list[ObjectInstance]
) -> list[dict[str, Any]]:
    """The hand and object instance annotations of one image (ids filled in by the caller)."""
    ann, seg = sample["ann.json"], np.asarray(sample["seg.png"])
    out = []
    hand_mask = seg == SEG_HAND
    if hand_mask.any():
        kps = hand_keypoints(ann)
        out.append(
            {
                "image_id": image_id,
                "category_id": HAND_CATEGORY,
                "iscrowd": 0,
                "area": int(hand_mask.sum()),
                "bbox": box_xywh(hand_mask),
                "segmentation": rle(hand_mask),
                "keypoints": kps,
                "num_keypoints": int(sum(1 for v in kps[2::3] if v > 0)),
                "hand_side": ann["hand"]["side"],
            }
        )
    for obj in insts:
        if not obj.visible.any():
            continue
        out.append(
            {
                "image_id": image_id,
                "category_id": cat_ids[obj.asset.category],
                "iscrowd": 0,
                "area": int(obj.visible.sum()),
                "bbox": box_xywh(obj.visible),
                "segmentation": rle(obj.visible),
                "keypoints": [0] * (3 * len(HAND_JOINT_NAMES)),  # none: COCOeval's keypoint pass skips it
                "num_keypoints": 0,
                "object_id": obj.asset.id,
            }
        )
    return out


def export_coco(
    samples: Iterable[Sample],
    keys: list[str],
    out_dir: Path,
    objects: dict[str, ObjectAsset],
    split: str = "train",
    val_fraction: float = 0.0,
    on_sample: Callable[[], None] | None = None,
) -> int:
    """Write ``samples`` (render or synthesize output) as COCO files, one per split; returns the count."""
    out_dir = Path(out_dir)
    plan = plan_images(keys, split, val_fraction)
    order = sorted(plan, key=lambda k: plan[k].name)
    image_ids = {key: i + 1 for i, key in enumerate(order)}
    cats = categories(objects)
    cat_ids = {c["name"]: c["id"] for c in cats if c["id"] != HAND_CATEGORY}
    images: dict[str, dict[int, dict[str, Any]]] = {}
    anns: dict[int, list[dict[str, Any]]] = {}
    count = 0
    for sample in samples:
        check_renders(sample)
        key, ann = sample["__key__"], sample["ann.json"]
        insts = object_instances(sample, objects)
        slot, image_id = plan[key], image_ids[key]
        seg = np.asarray(sample["seg.png"])
        h, w = seg.shape
        color = sample["image.jpg"] if "image.jpg" in sample else sample.get("shade.png")  # decode one of them
        if color.shape[:2] != (h, w):
            color = cv2.resize(color, (w, h), interpolation=cv2.INTER_CUBIC)
        folder = out_dir / "images" / slot.split
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / f"{key}.png", encode_field("x.png", color))
        images.setdefault(slot.split, {})[image_id] = {
            "id": image_id,
            "file_name": f"{key}.png",
            "width": w,
            "height": h,
            "key": key,
            "K": np.asarray(ann["camera"]["K"], np.float64).round(6).tolist(),
        }
        anns[image_id] = annotations(sample, image_id, cat_ids, insts)
        count += 1
        if on_sample is not None:
            on_sample()
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for name, split_images in sorted(images.items()):
        records = []
        for image_id in sorted(split_images):
            for a in anns[image_id]:
                records.append({"id": len(records) + 1, **a})
        data = {
            "info": {"description": f"hoigen {name}", "version": "1.0"},
            "licenses": [],
            "images": [split_images[i] for i in sorted(split_images)],
            "annotations": records,
            "categories": cats,
        }
        atomic_write_bytes(out_dir / "annotations" / f"{name}.json", json.dumps(data).encode())
    return count
