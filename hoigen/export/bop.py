"""Export to the BOP scenewise format (Hodan et al., github.com/thodan/bop_toolkit,
``docs/bop_datasets_format.md``), the layout BlenderProc writes and the BOP toolkit reads.

Layout (``<out>/``); every length in millimetres, as BOP wants:

- ``camera.json``: ``fx, fy, cx, cy, width, height, depth_scale`` of the (first) camera.
- ``models/obj_<obj_id:06d>.ply``: ASCII PLY with vertex normals, in the BOP model frame: origin at
  the centre of the 3D bounding box, **z up** (hoigen's mesh frame is y up: x stays, y -> z, z -> -y).
  ``models/models_info.json``: per obj_id ``diameter`` (largest vertex distance), ``min_x/y/z``,
  ``size_x/y/z`` and, for bottle/bowl/can, ``symmetries_continuous`` (axis z through the origin).
- ``models_eval/``: the same models for bop_toolkit's error functions (MSSD/MSPD read vertices),
  in the same frame, subdivided until no edge is longer than 1/``EVAL_EDGES`` of the diameter
  (bop_toolkit remeshes for an even vertex density; this only adds vertices), with their own
  ``models_info.json``.
  **Extension:** ``models/objects.json`` maps obj_id to hoigen's object id and category.
  obj_ids are 1.. in sorted order of the hoigen object ids of ``objects.parquet``; ``models/`` and
  ``models_eval/`` hold every object any exported instance (grasped or distractor) uses.
- ``<split>/<scene:06d>/``: one scene per (object, grasp, view) trajectory; image ids are its frames.
  Ground truth ``gt`` (0-based) of an image is its ``gt``-th object instance in the order of
  :func:`hoigen.data.contract.sample_instances`: 0 the grasped object, k + 1 distractor k; every
  instance is listed, visible or not (as BOP lists every annotated object). The hand and the table are
  not objects: they have no ground truth, and their pixels are outside every ``mask_visib``.
  - ``rgb/<im:06d>.png``, ``depth/<im:06d>.png`` (uint16; depth in mm = value * depth_scale, 1.0).
  - ``mask/<im:06d>_<gt:06d>.png``: the full (amodal) silhouette of ground truth ``gt`` in the image
    (its ``amodal.png`` bit), 255 inside; ``mask_visib/`` its visible part (``seg.png`` == its seg id:
    pixels of the hand, the table or a nearer object excluded).
  - ``scene_camera.json``: per image ``cam_K`` (3x3 row-wise), ``depth_scale``, ``cam_R_w2c`` and
    ``cam_t_w2c`` (world -> camera, mm).
  - ``scene_gt.json``: per image a list of ``{obj_id, cam_R_m2c (row-wise), cam_t_m2c (mm)}``.
  - ``scene_gt_info.json``: per ground truth ``bbox_obj``, ``bbox_visib`` ([x, y, w, h], -1s when
    empty), ``px_count_all``, ``px_count_valid`` (full mask in the image with depth > 0),
    ``px_count_visib`` (visible mask), ``visib_fract`` = visib / all (0 when all is 0). As in
    bop_toolkit's ``calc_gt_info``, ``px_count_all`` and ``bbox_obj`` cover the whole silhouette,
    including what falls outside the image (the instance's ``silhouette`` record, render's
    ``object.silhouette`` for the grasped object, counted on a canvas three times the image size; so
    ``bbox_obj`` may start below 0). Instances without that record (shards rendered before the field
    existed; distractors rendered without it) fall back to ``amodal.png``, which stops at the border.
  - ``scene_gt_coco.json``: the scene's visible instance masks in COCO form, as bop_toolkit's
    ``calc_gt_coco`` and BlenderProc write it: ``images`` (id = image id, ``file_name``
    ``rgb/<im>.png``), ``categories`` (id = obj_id), ``annotations`` (RLE of ``mask_visib``,
    ``bbox`` = ``bbox_visib``, ``area``, ``iscrowd`` 0, ``ignore`` when ``visib_fract`` < 0.1);
    instances with no visible pixel are left out.
  - **Extension:** ``scene_hand.json``: per image the hand record of the NOCS ``_hand.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import trimesh

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.codec import encode_field
from hoigen.data.schema import Sample
from hoigen.data.shards import member_bytes
from hoigen.export.coco import rle
from hoigen.export.common import (
    ObjectInstance,
    bbox_xywh,
    full_masks,
    full_silhouette,
    hand_record,
    mesh_to_cam,
    object_instances,
    plan_images,
)
from hoigen.export.nocs import check_renders
from hoigen.objects import ObjectAsset
from hoigen.pose.metrics import SYMMETRIC_CLASSES

MM = 1000.0
EVAL_EDGES = 40  # models_eval: no edge longer than diameter / EVAL_EDGES
COCO_IGNORE_BELOW = 0.1  # scene_gt_coco: instances less visible than this are marked ignore
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def bop_from_mesh(asset: ObjectAsset) -> np.ndarray:
    """4x4 rigid map hoigen mesh frame (metres, y up) -> BOP model frame (bbox centre, z up; metres)."""
    lo, hi = np.asarray(asset.mesh.bounds, np.float64)
    m = np.eye(4)
    m[:3, :3] = Y_UP_TO_Z_UP
    m[:3, 3] = -Y_UP_TO_Z_UP @ ((lo + hi) / 2.0)
    return m


def model_vertices_mm(asset: ObjectAsset) -> np.ndarray:
    m = bop_from_mesh(asset)
    return (np.asarray(asset.mesh.vertices, np.float64) @ m[:3, :3].T + m[:3, 3]) * MM


def model_ply(asset: ObjectAsset, vertices: np.ndarray | None = None, faces: np.ndarray | None = None) -> bytes:
    v = model_vertices_mm(asset) if vertices is None else vertices
    f = np.asarray(asset.mesh.faces) if faces is None else faces
    normals = trimesh.Trimesh(v, f, process=False).vertex_normals
    header = (
        "ply\nformat ascii 1.0\ncomment hoigen object in the BOP model frame (mm, z up, bbox centred)\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property float nx\nproperty float ny\nproperty float nz\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    rows = [
        f"{a:.5f} {b:.5f} {c:.5f} {d:.5f} {e:.5f} {g:.5f}\n" for (a, b, c), (d, e, g) in zip(v, normals, strict=True)
    ]
    rows += [f"3 {a} {b} {c}\n" for a, b, c in f]
    return (header + "".join(rows)).encode()


def eval_model(asset: ObjectAsset, diameter: float) -> tuple[np.ndarray, np.ndarray]:
    """The model's vertices (mm) and faces subdivided until no edge exceeds ``diameter / EVAL_EDGES``."""
    from trimesh.remesh import subdivide_to_size

    v, f = subdivide_to_size(model_vertices_mm(asset), np.asarray(asset.mesh.faces), diameter / EVAL_EDGES, 16)
    return np.asarray(v), np.asarray(f)


def model_info(asset: ObjectAsset) -> dict[str, Any]:
    v = model_vertices_mm(asset)
    hull = trimesh.Trimesh(v, np.asarray(asset.mesh.faces), process=False).convex_hull.vertices
    d = np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)).max()
    lo, hi = v.min(0), v.max(0)
    info: dict[str, Any] = {"diameter": round(float(d), 5)}
    for axis, a, b in zip("xyz", lo, hi, strict=True):
        info[f"min_{axis}"] = round(float(a), 5)
        info[f"size_{axis}"] = round(float(b - a), 5)
    if asset.category in SYMMETRIC_CLASSES:
        info["symmetries_continuous"] = [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]
    return info


def gt_info(
    sample: Sample, amodal: np.ndarray, visible: np.ndarray, depth: np.ndarray, inst: dict[str, Any] | None = None
) -> dict[str, Any]:
    """BOP ``scene_gt_info`` of one instance (default: the grasped object); ``amodal`` is its full mask
    inside the image."""
    all_px, box = full_silhouette(sample, inst, amodal)
    all_px = max(all_px, int(amodal.sum()))  # never fewer than the image holds (old shards: equal)
    visib = int((visible & amodal).sum())
    return {
        "bbox_obj": box,
        "bbox_visib": bbox_xywh(visible),
        "px_count_all": all_px,
        "px_count_valid": int((amodal & (depth > 0)).sum()),
        "px_count_visib": visib,
        "visib_fract": round(visib / all_px, 6) if all_px else 0.0,
    }


def scene_gt(ann: dict[str, Any], obj: ObjectInstance, obj_id: int, bop_from: np.ndarray) -> dict[str, Any]:
    """One ``scene_gt`` entry: the instance's BOP model frame -> camera (rotation row-wise, mm)."""
    m2c = mesh_to_cam(ann, obj.record) @ np.linalg.inv(bop_from)
    return {
        "obj_id": obj_id,
        "cam_R_m2c": m2c[:3, :3].reshape(-1).round(9).tolist(),
        "cam_t_m2c": (m2c[:3, 3] * MM).round(6).tolist(),
    }


def scene_coco(scene: dict[str, Any], obj_ids: list[int], size: tuple[int, int]) -> dict[str, Any]:
    """A scene's ``scene_gt_coco.json`` from its images' visible masks and gt infos."""
    images, annotations = [], []
    for im in sorted(scene["masks"], key=int):
        images.append({"id": int(im), "file_name": f"rgb/{int(im):06d}.png", "width": size[0], "height": size[1]})
        for gt_id, (mask, info) in enumerate(zip(scene["masks"][im], scene["info"][im], strict=True)):
            if info["px_count_visib"] == 0:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(im),
                    "category_id": scene["obj"][im][gt_id],
                    "iscrowd": 0,
                    "area": info["px_count_visib"],
                    "bbox": info["bbox_visib"],
                    "segmentation": rle(mask),
                    "width": size[0],
                    "height": size[1],
                    "ignore": info["visib_fract"] < COCO_IGNORE_BELOW,
                }
            )
    categories = [{"id": i, "name": str(i), "supercategory": "hoigen"} for i in obj_ids]
    return {"info": {"description": "hoigen"}, "licenses": [], "categories": categories, "images": images,
            "annotations": annotations}


def export_bop(
    samples: Iterable[Sample],
    keys: list[str],
    out_dir: Path,
    objects: dict[str, ObjectAsset],
    split: str = "train",
    val_fraction: float = 0.0,
    on_sample: Callable[[], None] | None = None,
) -> int:
    """Write ``samples`` (render or synthesize output) as a BOP scenewise dataset; returns the count."""
    out_dir = Path(out_dir)
    plan = plan_images(keys, split, val_fraction, per_scene=10**6)
    obj_ids = {oid: i + 1 for i, oid in enumerate(sorted(objects))}
    bop_frames = {oid: bop_from_mesh(a) for oid, a in objects.items()}
    scenes: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    camera: dict[str, Any] | None = None
    used: set[str] = set()
    count = 0
    for sample in samples:
        check_renders(sample)
        ann = sample["ann.json"]
        insts = object_instances(sample, objects)
        slot = plan[sample["__key__"]]
        folder = out_dir / slot.split / f"{slot.scene:06d}"
        for sub in ("rgb", "depth", "mask", "mask_visib"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        depth = np.asarray(sample["depth.png"])
        h, w = depth.shape
        color = sample["image.jpg"] if "image.jpg" in sample else sample.get("shade.png")  # decode one of them
        if color.shape[:2] != (h, w):
            color = cv2.resize(color, (w, h), interpolation=cv2.INTER_CUBIC)
        full = full_masks(sample)
        im = f"{slot.index:06d}"
        atomic_write_bytes(folder / "rgb" / f"{im}.png", encode_field("x.png", color))
        atomic_write_bytes(folder / "depth" / f"{im}.png", member_bytes(sample, "depth.png"))
        gts, infos = [], []
        for gt_id, obj in enumerate(insts):
            amodal = full.get(obj.seg_id, np.zeros_like(obj.visible)) | obj.visible
            atomic_write_bytes(folder / "mask" / f"{im}_{gt_id:06d}.png", encode_field("x.png", amodal))
            atomic_write_bytes(folder / "mask_visib" / f"{im}_{gt_id:06d}.png", encode_field("x.png", obj.visible))
            gts.append(scene_gt(ann, obj, obj_ids[obj.asset.id], bop_frames[obj.asset.id]))
            infos.append(gt_info(sample, amodal, obj.visible, depth, obj.record))
            used.add(obj.asset.id)
        K = np.asarray(ann["camera"]["K"], np.float64)
        w2c = np.asarray(ann["camera"]["world_to_cam"], np.float64)
        record = scenes.setdefault(
            (slot.split, slot.scene), {"camera": {}, "gt": {}, "info": {}, "hand": {}, "masks": {}, "obj": {}}
        )
        key = str(slot.index)
        record["camera"][key] = {
            "cam_K": K.reshape(-1).round(6).tolist(),
            "depth_scale": 1.0,
            "cam_R_w2c": w2c[:3, :3].reshape(-1).round(9).tolist(),
            "cam_t_w2c": (w2c[:3, 3] * MM).round(6).tolist(),
        }
        record["gt"][key] = gts
        record["info"][key] = infos
        record["hand"][key] = hand_record(ann)
        record["masks"][key] = [obj.visible for obj in insts]
        record["size"] = (w, h)
        record["obj"][key] = [g["obj_id"] for g in gts]
        if camera is None:
            camera = {
                "cx": K[0, 2],
                "cy": K[1, 2],
                "depth_scale": 1.0,
                "fx": K[0, 0],
                "fy": K[1, 1],
                "height": h,
                "width": w,
            }
        count += 1
        if on_sample is not None:
            on_sample()

    def dump(path: Path, data: Any) -> None:
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())

    def by_im(d: dict[str, Any]) -> dict[str, Any]:
        return {k: d[k] for k in sorted(d, key=int)}

    for (name, scene), record in scenes.items():
        folder = out_dir / name / f"{scene:06d}"
        dump(folder / "scene_camera.json", by_im(record["camera"]))
        dump(folder / "scene_gt.json", by_im(record["gt"]))
        dump(folder / "scene_gt_info.json", by_im(record["info"]))
        dump(folder / "scene_hand.json", by_im(record["hand"]))
        dump(folder / "scene_gt_coco.json", scene_coco(record, [obj_ids[o] for o in sorted(used)], record["size"]))
    infos = {o: model_info(objects[o]) for o in sorted(used)}
    for folder_name in ("models", "models_eval"):
        models = out_dir / folder_name
        models.mkdir(parents=True, exist_ok=True)
        for oid in sorted(used):
            asset = objects[oid]
            mesh = eval_model(asset, infos[oid]["diameter"]) if folder_name == "models_eval" else (None, None)
            atomic_write_bytes(models / f"obj_{obj_ids[oid]:06d}.ply", model_ply(asset, *mesh))
        dump(models / "models_info.json", {str(obj_ids[o]): infos[o] for o in sorted(used)})
    dump(
        out_dir / "models" / "objects.json",
        {str(obj_ids[o]): {"id": o, "category": objects[o].category} for o in sorted(used)},
    )
    if camera is not None:
        dump(out_dir / "camera.json", camera)
    return count
