"""Grasp quality metrics stored in ``ann.json["grasp"]`` and ``index.parquet`` (``grasp_<name>``).

Per grasp (hand and object in the object's mesh frame):

- ``penetration_depth_cm``: deepest hand vertex inside the object (exact mesh query; 0 if none).
- ``penetration_volume_cm3``: voxelised intersection volume. The flat hand's interior is voxelised
  once (~3 mm voxels, :func:`hoigen.grasp.skin.interior_skin`), the voxel centres are carried into
  the grasp pose by the hand's own skinning, and those inside the object (signed-distance grid > 0)
  are counted times the voxel volume. (GraspTTA's released code voxelises the object's surface at
  5 mm and tests the points inside the hand; ours is finer and counts interior voxels too.) Poses
  are skinned ``VOLUME_CHUNK`` at a time (padded), so a pose's volume does not depend on how many
  are measured together; grasp synthesis measures only the accepted grasps, in one batch, after
  the filters (the volume is not a filter criterion). Only voxel centres in the box around the
  grid's positive cells (plus 1.5 cells) are looked up: no other can be inside.
- ``contact_fingers``: fingers with any vertex within ``CONTACT_M`` of the surface (or inside);
  ``contact_thumb``..``contact_pinky`` which ones; ``contact_ratio`` = ``contact_fingers / 5``;
  ``palm_contact``: a palm vertex within ``CONTACT_M``.
- ``tip_distance_cm``: mean distance of the five fingertips to the surface.
- ``sim_displacement_cm``: see :mod:`hoigen.grasp.simulate` (pybullet, the fixed hand holds the
  object under gravity; GraspTTA's protocol).
- ``approach_penetration_cm``: deepest penetration along the approach trajectory before its last
  ``APPROACH_FREE_FRAMES`` frames (the hand must not pass through the object on its way in).
- ``accepted`` (bool): the grasp passed the filters of :class:`GraspFilter`; ``energy``: the final
  optimisation energy; ``candidates``/``rejected``: how many candidates the object's batch had and
  how many failed the filters (the same on every grasp of that object).

Over a set of grasps: :func:`cluster_entropy` (diversity: k-means over the 21 joints in the object
frame, entropy of the cluster assignments and mean cluster size, as GrabNet and GraspTTA report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from hoigen.grasp.trajectory import APPROACH_FREE_FRAMES  # noqa: F401  (named in the docstring)
from hoigen.hand.keypoints import FINGERS
from hoigen.objects.geometry import MeshQuery, signed_distance
from hoigen.objects.sdf import SDFGrid, sdf_grid

CONTACT_M = 0.005
PREFILTER_M = 0.008  # vertices farther out than this (grid estimate) skip the exact query
VOLUME_CHUNK = 16  # poses skinned at once for the volume (padded: the same numbers for any batch size)
METRIC_NAMES = (
    "penetration_depth_cm",
    "penetration_volume_cm3",
    "contact_fingers",
    "contact_ratio",
    "palm_contact",
    "tip_distance_cm",
    "sim_displacement_cm",
    "approach_penetration_cm",
    "accepted",
    "energy",
)


def penetration_cm(mesh: trimesh.Trimesh, points: np.ndarray) -> float:
    """Deepest of ``points`` inside ``mesh`` in centimetres (signed distance is positive inside)."""
    return float(max(signed_distance(mesh, points).max(), 0.0) * 100.0)


@dataclass
class GraspFilter:
    """Acceptance thresholds (see ``GraspOptions``)."""

    max_penetration: float = 0.5  # cm
    max_sim_displacement: float = 2.0  # cm
    min_contacts: int = 3  # fingers

    def accepts(self, metrics: dict) -> bool:
        return (
            metrics["penetration_depth_cm"] <= self.max_penetration
            and metrics["sim_displacement_cm"] <= self.max_sim_displacement
            and metrics["contact_fingers"] >= self.min_contacts
        )

    def reasons(self, metrics: dict) -> list[str]:
        """Why a grasp is rejected (empty when accepted)."""
        out = []
        if metrics["penetration_depth_cm"] > self.max_penetration:
            out.append("penetration")
        if metrics["sim_displacement_cm"] > self.max_sim_displacement:
            out.append("sim_displacement")
        if metrics["contact_fingers"] < self.min_contacts:
            out.append("contacts")
        return out


class GraspEvaluator:
    """Metrics of grasps of one object by one hand; caches the object's exact query and SDF grid."""

    def __init__(self, mesh: trimesh.Trimesh, hand, key: str, sdf: SDFGrid | None = None) -> None:
        from hoigen.grasp.simulate import hand_pieces
        from hoigen.grasp.skin import interior_skin

        self.mesh = mesh
        self.hand = hand
        self.key = key
        self.query = MeshQuery(mesh)
        self.sdf = sdf if sdf is not None else sdf_grid(mesh, sha256=key)
        self.interior, self.pitch = interior_skin(hand)
        self.fingers = hand.vertex_fingers
        self.pieces = hand_pieces(hand.faces, hand.vertex_bones)
        self.tips = np.asarray(hand.tip_vertex_ids)
        self._positive_box = _positive_box(self.sdf)

    def exact_signed(self, vertices: np.ndarray) -> np.ndarray:
        """Signed distance (...) of hand vertices (..., 3): exact near the surface, the grid estimate
        elsewhere. Each point's value is its own (both queries treat points independently), so several
        hands can be measured in one call, which saves the per-call overhead of the exact search."""
        pts = np.asarray(vertices, dtype=np.float64)
        flat = pts.reshape(-1, 3)
        approx = self.sdf.query_np(flat)
        near = approx > -PREFILTER_M
        out = approx.copy()
        if near.any():
            out[near] = self.query.signed_distance(flat[near])
        return out.reshape(pts.shape[:-1])

    def penetration_volume_cm3(self, hand_pose: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> float:
        """Voxelised hand-object intersection volume (cm^3) of a hand pose placed by ``R, T``."""
        one = (np.reshape(hand_pose, (1, 45)), np.asarray(rotation)[None], np.asarray(translation)[None])
        return float(self.penetration_volumes_cm3(*one)[0])

    def penetration_volumes_cm3(
        self, hand_poses: np.ndarray, rotations: np.ndarray, translations: np.ndarray
    ) -> np.ndarray:
        """Volumes (n,) of hand poses (n, 45) placed by ``rotations`` (n, 3, 3) and ``translations`` (n, 3).

        The poses are skinned ``VOLUME_CHUNK`` at a time (the last chunk padded with its first pose): a
        pose's skinned voxels, hence its volume, are the same whatever else is in the batch."""
        poses = np.asarray(hand_poses, np.float32).reshape(-1, 45)
        rotations, translations = np.asarray(rotations), np.asarray(translations)
        lo, hi = self._positive_box
        out = np.zeros(len(poses))
        for s in range(0, len(poses), VOLUME_CHUNK):
            chunk = poses[s : s + VOLUME_CHUNK]
            padded = np.concatenate([chunk, np.repeat(chunk[:1], VOLUME_CHUNK - len(chunk), axis=0)])
            with torch.no_grad():
                pts, _ = self.interior(torch.from_numpy(padded))
            near, owner = [], []
            for i in range(len(chunk)):
                world = pts[i].numpy().astype(np.float64) @ rotations[s + i].T + translations[s + i]
                box = (world >= lo) & (world <= hi)
                near.append(world[box[:, 0] & box[:, 1] & box[:, 2]])
                owner.append(np.full(len(near[-1]), i))
            near_all, owner_all = np.concatenate(near), np.concatenate(owner)
            inside = self.sdf.query_np(near_all) > 0 if len(near_all) else np.zeros(0, dtype=bool)  # one lookup
            out[s : s + len(chunk)] = np.bincount(owner_all[inside], minlength=len(chunk)) * self.pitch**3 * 1e6
        return out

    def evaluate(
        self,
        vertices: np.ndarray,
        hand_pose: np.ndarray,
        rotation: np.ndarray,
        translation: np.ndarray,
        simulate: bool = True,
        grasp_filter: GraspFilter | None = None,
        volume: bool = True,
        signed: np.ndarray | None = None,
    ) -> dict[str, float | int | bool]:
        """Per-grasp metrics of the posed hand ``vertices`` (V, 3) in the mesh frame.

        With ``grasp_filter``, the cheap checks (penetration depth, contacts) run first and a grasp
        that already fails them skips the volume and the pybullet test (both NaN): it is rejected
        either way; and the pybullet test stops once the object has moved past the filter's
        ``max_sim_displacement`` (a rejected grasp's ``sim_displacement_cm`` is then a lower bound).
        ``volume=False`` leaves the volume NaN for the caller to fill in later
        (:meth:`penetration_volumes_cm3`, batched). ``signed``: the vertices' :meth:`exact_signed`, when
        the caller has measured them already (several hands at once)."""
        from hoigen.grasp.simulate import simulation_displacement_cm

        sd = self.exact_signed(vertices) if signed is None else signed
        touching = sd > -CONTACT_M
        per_finger = [bool(touching[self.fingers == k].any()) for k in range(5)]
        count = int(sum(per_finger))
        depth = round(float(max(sd.max(), 0.0) * 100.0), 4)
        metrics: dict[str, float | int | bool] = {
            "penetration_depth_cm": depth,
            "penetration_volume_cm3": float("nan"),
            "contact_fingers": count,
            "contact_ratio": round(count / 5.0, 4),
            "palm_contact": bool(touching[self.fingers < 0].any()),
            "tip_distance_cm": round(float(np.abs(sd[self.tips]).mean() * 100.0), 4),
        }
        metrics.update({f"contact_{name}": flag for name, flag in zip(FINGERS, per_finger, strict=True)})
        if grasp_filter is not None and (depth > grasp_filter.max_penetration or count < grasp_filter.min_contacts):
            if simulate:
                metrics["sim_displacement_cm"] = float("nan")
            return metrics
        if volume:
            metrics["penetration_volume_cm3"] = round(self.penetration_volume_cm3(hand_pose, rotation, translation), 4)
        if simulate:
            stop = None if grasp_filter is None else grasp_filter.max_sim_displacement  # past it: rejected
            metrics["sim_displacement_cm"] = round(
                simulation_displacement_cm(vertices, self.pieces, self.mesh, self.key, stop_cm=stop), 4
            )
        return metrics


def _positive_box(sdf: SDFGrid) -> tuple[np.ndarray, np.ndarray]:
    """World-space bounds (lo, hi), each (3,), outside which a point's grid value cannot be positive.

    A trilinear value is positive only if a corner of the point's cell is (the rest interpolates
    values <= 0 and subtracts the distance outside the grid), so a point more than 1.5 cells beyond
    the range of positive grid points along an axis is outside; a border cell (where clamping puts
    points beyond the grid) is never cut off. No positive value at all: an empty box."""
    positive = np.argwhere(sdf.values > 0)
    if len(positive) == 0:
        return np.full(3, np.inf), np.full(3, -np.inf)
    first, last = positive.min(axis=0), positive.max(axis=0)
    upper = np.asarray(sdf.shape) - 1
    lo = np.where(first >= 2, sdf.origin + (first - 1.5) * sdf.spacing, -np.inf)
    hi = np.where(last + 1 <= upper - 1, sdf.origin + (last + 1.5) * sdf.spacing, np.inf)
    return lo, hi


def kmeans(x: np.ndarray, k: int, iterations: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic k-means (k-means++ seeding from ``seed``): (labels (n,), centres (k, d))."""
    rng = np.random.default_rng(seed)
    n = len(x)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        if d2.sum() <= 0:
            break
        centres.append(x[rng.choice(n, p=d2 / d2.sum())])
    c = np.asarray(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        labels = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(axis=1)
        new = np.stack([x[labels == j].mean(axis=0) if np.any(labels == j) else c[j] for j in range(len(c))])
        if np.allclose(new, c):
            break
        c = new
    return labels, c


def cluster_entropy(features: np.ndarray, k: int = 20, seed: int = 0) -> tuple[float, float]:
    """(entropy of k-means cluster assignments (nats), mean cluster size) of grasp ``features`` (n, d).

    GrabNet and GraspTTA cluster generated grasps with k-means (k = 20) and report the entropy of the
    assignments (higher = more diverse) and the cluster size (mean distance of a grasp to its centre,
    here in the units of ``features``). k is capped at the number of distinct grasps; identical
    grasps give 0, k equally populated, well separated groups give log k.
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if len(x) == 0:
        return 0.0, 0.0
    distinct = len(np.unique(np.round(x, 9), axis=0))
    labels, centres = kmeans(x, max(1, min(k, distinct)), seed=seed)
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    entropy = float(-(p * np.log(p)).sum())
    size = float(np.linalg.norm(x - centres[labels], axis=1).mean())
    return entropy, size
