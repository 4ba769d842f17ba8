"""What every export format needs from a render/synth sample: poses, boxes, the hand record, the
amodal (full) object mask, and a deterministic image plan (split, scene, index).

Poses: ``object.pose`` maps the mesh frame to the world, ``camera.world_to_cam`` the world to the
OpenCV camera, ``object.nocs_from_mesh`` the mesh frame to the NOCS frame (centred bounding box,
diagonal 1). Hence ``cam_from_nocs = world_to_cam @ pose @ inv(nocs_from_mesh)`` = s R | t with s the
bounding-box diagonal in metres.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from hoigen.data.schema import SEG_OBJECT, Sample, parse_key
from hoigen.errors import HoigenError
from hoigen.objects import ObjectAsset

SCENE_IMAGES = 10  # the NOCS CAMERA loader reads images 0000..0009 of each scene folder


def mesh_to_cam(ann: dict[str, Any]) -> np.ndarray:
    """4x4 mesh frame -> camera frame (metres)."""
    return np.asarray(ann["camera"]["world_to_cam"], np.float64) @ np.asarray(ann["object"]["pose"], np.float64)


def nocs_to_cam(ann: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """(R, t, s) with ``p_cam = s R p_nocs + t``."""
    m = mesh_to_cam(ann) @ np.linalg.inv(np.asarray(ann["object"]["nocs_from_mesh"], np.float64))
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


@cache  # never evicted: deleting a pyrender EGL renderer ends the shared display
def _renderer(width: int, height: int) -> Any:
    from hoigen.render.renderer import Renderer

    return Renderer(width, height, supersample=1)


def amodal_mask(sample: Sample, asset: ObjectAsset) -> np.ndarray:
    """The object's full silhouette, hand or not: render's ``amodal.png`` (bit value 2 = object) when
    the shard has it, else the object rendered alone with the same renderer and camera."""
    if "amodal.png" in sample:
        return (np.asarray(sample["amodal.png"]) & 2) > 0
    from hoigen.render.cameras import Camera
    from hoigen.render.renderer import SceneSpec

    ann = sample["ann.json"]
    cam = ann["camera"]
    camera = Camera(cam["K"], cam["world_to_cam"], cam["width"], cam["height"])
    behind = camera.center - 10.0 * camera.cam_to_world[:3, 2]  # a stand-in hand triangle, clipped away
    hand_v = behind + np.array([[0.0, 0.0, 0.0], [1e-3, 0.0, 0.0], [0.0, 1e-3, 0.0]])
    result = _renderer(camera.width, camera.height).render(
        SceneSpec(
            hand_vertices=hand_v,
            hand_faces=np.array([[0, 1, 2]]),
            object_mesh=asset.mesh,
            object_pose=np.asarray(ann["object"]["pose"]),
            nocs_from_mesh=asset.nocs_from_mesh,
            camera=camera,
            joints3d=np.repeat(behind[None], 21, 0),
            mesh_key=asset.id,
        )
    )
    return result.seg == SEG_OBJECT


def visible_mask(sample: Sample) -> np.ndarray:
    return np.asarray(sample["seg.png"]) == SEG_OBJECT


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


def object_of(sample: Sample, objects: dict[str, ObjectAsset]) -> ObjectAsset:
    """The object asset of a sample, or a one-line error when its grasp folder's objects are missing."""
    obj_id = sample["ann.json"]["object"]["id"]
    if obj_id not in objects:
        raise HoigenError(
            f"{sample.get('__shard__', '?')}: object '{obj_id}' is not in objects.parquet; "
            "export the shards together with their grasp folder"
        )
    return objects[obj_id]
