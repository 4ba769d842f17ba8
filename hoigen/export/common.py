"""What every export format needs from a render/synth sample: poses, boxes, the hand record, the
amodal (full) object mask and silhouette, mug handle visibility, and a deterministic image plan
(split, scene, index). Export reads what render wrote; it never renders (nor imports hoigen.render).

Instances: every format exports every object instance of a sample, in the order of
:func:`hoigen.data.contract.sample_instances` (the grasped object first, then the distractors; a sample
without ``instances`` is its one ``object``); :func:`object_instances` pairs each with its asset and its
visible mask (``seg.png == seg_id``). The table is not an object instance and is never exported as one.

Poses: an instance's ``pose`` (``object.pose`` for the grasped object) maps its mesh frame to the
world, ``camera.world_to_cam`` the world to the OpenCV camera, ``nocs_from_mesh`` the mesh frame to the
NOCS frame (centred bounding box, diagonal 1). Hence ``cam_from_nocs = world_to_cam @ pose @
inv(nocs_from_mesh)`` = s R | t with s the bounding-box diagonal in metres.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hoigen.data.contract import MAX_DISTRACTORS, SEG_FIRST_DISTRACTOR, SEG_OBJECT, amodal_masks, sample_instances
from hoigen.data.schema import Sample, parse_key
from hoigen.errors import HoigenError
from hoigen.objects import ObjectAsset

#: seg.png ids of object instances: the grasped object, then the distractors (not the hand, not the table)
OBJECT_SEG_IDS = (SEG_OBJECT, *range(SEG_FIRST_DISTRACTOR, SEG_FIRST_DISTRACTOR + MAX_DISTRACTORS))
SCENE_IMAGES = 10  # the NOCS CAMERA loader reads images 0000..0009 of each scene folder


def mesh_to_cam(ann: dict[str, Any], inst: dict[str, Any] | None = None) -> np.ndarray:
    """4x4 mesh frame -> camera frame (metres) of instance ``inst`` (default: the grasped ``object``)."""
    pose = (ann["object"] if inst is None else inst)["pose"]
    return np.asarray(ann["camera"]["world_to_cam"], np.float64) @ np.asarray(pose, np.float64)


def nocs_to_cam(ann: dict[str, Any], inst: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(R, t, s) with ``p_cam = s R p_nocs + t`` of instance ``inst`` (default: the grasped ``object``)."""
    nocs_from_mesh = (ann["object"] if inst is None else inst)["nocs_from_mesh"]
    m = mesh_to_cam(ann, inst) @ np.linalg.inv(np.asarray(nocs_from_mesh, np.float64))
    s = float(np.cbrt(np.linalg.det(m[:3, :3])))
    return m[:3, :3] / s, m[:3, 3].copy(), s


def nocs_size(asset: ObjectAsset) -> np.ndarray:
    """Bounding-box extents of the object in NOCS units (norm 1 for hoigen's tight boxes)."""
    lo, hi = np.asarray(asset.mesh.bounds, np.float64)
    return (hi - lo) * float(np.cbrt(np.linalg.det(asset.nocs_from_mesh[:3, :3])))


def nocs_vertices(asset: ObjectAsset) -> np.ndarray:
    v = np.asarray(asset.mesh.vertices, np.float64)
    return v @ asset.nocs_from_mesh[:3, :3].T + asset.nocs_from_mesh[:3, 3]


def bbox_xywh(mask: np.ndarray) -> list[int]:
    """BOP box (x, y, width, height) of a mask; [-1, -1, -1, -1] when empty (as the BOP toolkit)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [-1, -1, -1, -1]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def bbox_yxyx(mask: np.ndarray) -> list[int]:
    """NOCS/Mask R-CNN box (y1, x1, y2, x2), end exclusive; zeros when empty."""
    x, y, w, h = bbox_xywh(mask)
    return [0, 0, 0, 0] if w < 0 else [y, x, y + h, x + w]


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


def full_masks(sample: Sample) -> dict[int, np.ndarray]:
    """Every instance's full silhouette inside the image, occluded or not (seg id -> mask): render's
    ``amodal.png`` decoded by :func:`hoigen.data.contract.amodal_masks` (uint8 or uint16)."""
    if "amodal.png" not in sample:
        raise HoigenError(
            f"{sample.get('__shard__', '?')}: sample {sample['__key__']} has no amodal.png (made by an older "
            "hoigen render); rerun hoigen render on its grasp folder, then export"
        )
    return amodal_masks(sample["amodal.png"])


def amodal_mask(sample: Sample, seg_id: int = SEG_OBJECT) -> np.ndarray:
    """One instance's full silhouette inside the image, hand or not (default: the grasped object)."""
    masks = full_masks(sample)
    return masks.get(seg_id, np.zeros_like(masks[SEG_OBJECT]))


def full_silhouette(sample: Sample, inst: dict[str, Any] | None = None, amodal: np.ndarray | None = None
                    ) -> tuple[int, list[int]]:  # fmt: skip
    """(pixel count, [x, y, w, h] box) of an instance's whole silhouette (default: the grasped object),
    including what falls outside the image: its ``silhouette`` record (render's ``object.silhouette`` for
    the grasped object); without one (shards rendered before that field, distractors rendered without
    it) the full mask inside the image (``amodal``, else ``amodal.png``), which stops at the border."""
    seg_id = SEG_OBJECT if inst is None else int(inst["seg_id"])
    sil = None if inst is None else inst.get("silhouette")
    if sil is None and seg_id == SEG_OBJECT:
        sil = sample["ann.json"]["object"].get("silhouette")
    if sil is None:
        mask = amodal_mask(sample, seg_id) if amodal is None else amodal
        return int(mask.sum()), bbox_xywh(mask)
    x0, y0, x1, y1 = (int(v) for v in sil["bbox"])
    box = [x0, y0, x1 - x0, y1 - y0] if sil["px_count"] > 0 else [-1, -1, -1, -1]
    return int(sil["px_count"]), box


HANDLE_MARGIN = 1.02  # handle surface = farther than this times the body radius from the body's axis
HANDLE_DEPTH_TOL_MM = 4.0  # a handle point is seen when the depth map at its pixel is within this
_HANDLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # mesh sha256 -> handle samples


def _handle_points(asset: ObjectAsset) -> tuple[np.ndarray, np.ndarray]:
    """Handle surface samples of a mug (face centroids, mesh frame) and their areas.

    The mug stands y up in its NOCS frame with the handle sticking out sideways: the body is the
    upright cylinder of radius = half the smaller horizontal extent, on the side of the longer
    horizontal axis where the fewest faces poke out of it; the handle is every face whose centroid
    lies farther than ``HANDLE_MARGIN`` radii from that cylinder's axis."""
    if asset.sha256 in _HANDLES:
        return _HANDLES[asset.sha256]
    mesh = asset.mesh
    centroids = np.asarray(mesh.triangles_center, np.float64)
    areas = np.asarray(mesh.area_faces, np.float64)
    c = centroids @ asset.nocs_from_mesh[:3, :3].T + asset.nocs_from_mesh[:3, 3]
    v = nocs_vertices(asset)
    lo, hi = v.min(0), v.max(0)
    long_axis, short_axis = (0, 2) if hi[0] - lo[0] >= hi[2] - lo[2] else (2, 0)
    radius = (hi[short_axis] - lo[short_axis]) / 2
    mid = (hi[short_axis] + lo[short_axis]) / 2
    best: np.ndarray | None = None
    for axis_at in (lo[long_axis] + radius, hi[long_axis] - radius):
        out = np.hypot(c[:, long_axis] - axis_at, c[:, short_axis] - mid) > HANDLE_MARGIN * radius
        if best is None or areas[out].sum() < areas[best].sum():
            best = out
    _HANDLES[asset.sha256] = centroids[best], areas[best]
    return _HANDLES[asset.sha256]


def handle_share(sample: Sample, asset: ObjectAsset, inst: dict[str, Any] | None = None) -> float:
    """Share (0..1, by area) of a mug handle's surface seen in the image (instance ``inst``, default the
    grasped object): a handle point counts when its pixel shows this instance at the point's depth
    (within ``HANDLE_DEPTH_TOL_MM``), so a handle behind the body, under the hand or another object,
    or outside the image does not."""
    points, areas = _handle_points(asset)
    if not len(points) or areas.sum() <= 0:
        return 0.0
    ann = sample["ann.json"]
    seg_id = SEG_OBJECT if inst is None else int(inst["seg_id"])
    m = mesh_to_cam(ann, inst)
    cam = points @ m[:3, :3].T + m[:3, 3]
    z = cam[:, 2]
    seg, depth = np.asarray(sample["seg.png"]), np.asarray(sample["depth.png"], np.float64)
    h, w = seg.shape
    front = z > 1e-6
    uv = np.zeros((len(z), 2))
    uv[front] = (cam[front] @ np.asarray(ann["camera"]["K"], np.float64).T)[:, :2] / z[front, None]
    col, row = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
    seen = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    idx = np.flatnonzero(seen)
    at_depth = np.abs(depth[row[idx], col[idx]] - z[idx] * 1000.0) <= HANDLE_DEPTH_TOL_MM
    seen[idx] = (seg[row[idx], col[idx]] == seg_id) & at_depth
    return float(areas[seen].sum() / areas.sum())


@dataclass(frozen=True)
class ImageSlot:
    split: str
    scene: int
    index: int

    @property
    def name(self) -> str:
        return f"{self.split}/{self.scene:05d}/{self.index:04d}"


def split_of(group: tuple[str, int], groups: list[tuple[str, int]], split: str, val_fraction: float) -> str:
    """``val`` for a deterministic ``val_fraction`` of (object, grasp) trajectories, else ``split``."""
    if val_fraction <= 0:
        return split
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{g[0]}_{g[1]}".encode()).hexdigest())
    n_val = int(round(val_fraction * len(groups)))
    return "val" if group in ranked[:n_val] else split


def plan_images(
    keys: Iterable[str], split: str = "train", val_fraction: float = 0.0, per_scene: int = SCENE_IMAGES
) -> dict[str, ImageSlot]:
    """Key -> (split, scene, index): one camera's trajectory (object, grasp, view) in frame order,
    cut into scenes of at most ``per_scene`` images; scenes numbered from 0 per split."""
    parsed = {k: parse_key(k) for k in keys}
    groups = sorted({(p["object"], p["grasp"]) for p in parsed.values()})
    tracks: dict[tuple[str, int, int], list[str]] = {}
    for key in sorted(
        parsed, key=lambda k: (parsed[k]["object"], parsed[k]["grasp"], parsed[k]["view"] or 0, parsed[k]["frame"])
    ):
        p = parsed[key]
        tracks.setdefault((p["object"], p["grasp"], p["view"] or 0), []).append(key)
    next_scene: dict[str, int] = {}
    plan: dict[str, ImageSlot] = {}
    for (obj, grasp, _view), track in tracks.items():
        name = split_of((obj, grasp), groups, split, val_fraction)
        for start in range(0, len(track), per_scene):
            scene = next_scene.get(name, 0)
            next_scene[name] = scene + 1
            for i, key in enumerate(track[start : start + per_scene]):
                plan[key] = ImageSlot(name, scene, i)
    return plan


def _asset(sample: Sample, objects: dict[str, ObjectAsset], obj_id: str) -> ObjectAsset:
    """The asset of object ``obj_id``, or a one-line error when the grasp folder's objects lack it."""
    if obj_id not in objects:
        raise HoigenError(
            f"{sample.get('__shard__', '?')}: object '{obj_id}' is not in objects.parquet; "
            "export the shards together with their grasp folder"
        )
    return objects[obj_id]


@dataclass(frozen=True)
class ObjectInstance:
    """One object instance of a sample as the export formats see it."""

    number: int  # 1-based, in sample_instances order (grasped object 1): NOCS mask id, BOP gt id + 1
    seg_id: int  # its seg.png id (and amodal.png bit seg_id - 1)
    record: dict[str, Any]  # its ann.json instance (see sample_instances)
    asset: ObjectAsset
    visible: np.ndarray  # (H, W) bool, seg.png == seg_id


def object_instances(sample: Sample, objects: dict[str, ObjectAsset]) -> list[ObjectInstance]:
    """Every object instance of a sample (the grasped object first) with its asset and visible mask;
    a one-line error when an instance's object is not in the objects table or its seg id is not an
    object's (2, or 4 and up; each once)."""
    ann = sample["ann.json"]
    seg = np.asarray(sample["seg.png"])
    out: list[ObjectInstance] = []
    seen: set[int] = set()
    instances = sample_instances(ann)
    if not instances:
        raise HoigenError(
            f"{sample.get('__shard__', '?')}: sample {sample['__key__']} has an empty ann.json instances list; "
            "rerender its grasp folder"
        )
    for number, inst in enumerate(instances, start=1):
        seg_id = inst.get("seg_id")
        if not isinstance(seg_id, int) or seg_id in seen or seg_id not in OBJECT_SEG_IDS:
            raise HoigenError(
                f"{sample.get('__shard__', '?')}: sample {sample['__key__']} has an instance with seg_id {seg_id!r}; "
                f"object instances have seg id {SEG_OBJECT} or {OBJECT_SEG_IDS[1]}..{OBJECT_SEG_IDS[-1]}, each once: "
                "rerender its grasp folder"
            )
        seen.add(seg_id)
        asset = _asset(sample, objects, str(inst["id"]))
        out.append(ObjectInstance(number, seg_id, inst, asset, seg == seg_id))
    return out
