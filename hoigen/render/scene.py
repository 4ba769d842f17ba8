"""The scene around a grasp: the table under the grasped object and distractor objects on it.

Pure geometry (no GL), seeded by the caller; the render stage composes the result into the frame
(:mod:`hoigen.render.stage`). World frame y-up, metres.

- The **table** is a box of :data:`TABLE_SIZE` (x by z) and :data:`TABLE_THICKNESS`, its top at the
  height the object stands on (the grasp's ``support.height``; for grasp shards from before that
  field, the object's lowest point at frame 0: :func:`support_height`), centred under the grasped
  object. It is drawn into ``depth.png``/``seg.png`` (id 3) but is not an object instance.
- **Distractors** stand upright on the table top (their mesh's lowest point on it, a seeded yaw),
  their centres within :data:`PLACEMENT_RADIUS` of the grasped object's centre. A candidate is kept
  only if (a) its footprint (the convex hull of its vertices projected on the table) lies on the
  table, (b) that footprint is at least :data:`CLEARANCE` from the footprints of the grasped object
  (under every pose of the trajectory) and of the distractors placed before it, and (c) no point of
  the hand's swept volume (every vertex of every frame, plus :data:`SWEEP_STEPS` - 1 interpolated
  steps between consecutive frames) comes within :data:`CLEARANCE` of its 3D convex hull. Convex
  hulls contain the meshes, so the tests are conservative: placed meshes never intersect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh
from scipy.spatial import ConvexHull, QhullError

from hoigen.data.contract import SEG_TABLE

TABLE_SIZE = (1.2, 0.8)  # metres along world x and z: a desk
TABLE_THICKNESS = 0.03  # metres
CLEARANCE = 0.01  # metres between placed objects' footprints, and between a distractor and the hand's sweep
PLACEMENT_RADIUS = 0.25  # metres: distractor centres lie within this of the grasped object's centre (x, z)
PLACEMENT_TRIES = 60  # seeded candidate positions per distractor before the next candidate object is tried
SWEEP_STEPS = 4  # hand poses per frame interval (linear in the vertices) for the swept volume
TABLE_MARGIN = 0.01  # metres a footprint keeps from the table's edge


@dataclass(frozen=True)
class Table:
    """The support box: top at world y ``height``, centred at world (x, z) ``centre``, ``size`` = (x, z)."""

    height: float
    centre: tuple[float, float]
    size: tuple[float, float] = TABLE_SIZE
    thickness: float = TABLE_THICKNESS

    def mesh(self) -> trimesh.Trimesh:
        """The box in its own frame: top face at y = 0, centred in x and z."""
        sx, sz = self.size
        box = trimesh.creation.box(extents=(sx, self.thickness, sz))
        box.apply_translation((0.0, -self.thickness / 2, 0.0))
        return box

    @property
    def pose(self) -> np.ndarray:
        """Table mesh frame -> world."""
        pose = np.eye(4)
        pose[:3, 3] = (self.centre[0], self.height, self.centre[1])
        return pose

    def holds(self, footprint: np.ndarray, margin: float = TABLE_MARGIN) -> bool:
        """True when every vertex of the (K, 2) x-z ``footprint`` lies on the top, ``margin`` from its edges."""
        half = np.asarray(self.size) / 2 - margin
        return bool((np.abs(np.asarray(footprint) - self.centre) <= half).all())

    def to_ann(self) -> dict[str, Any]:
        """ann.json ``table``: ``{"seg_id": 3, "height": y, "size": [sx, sz]}``."""
        return {"seg_id": SEG_TABLE, "height": round(float(self.height), 6), "size": [float(s) for s in self.size]}


def transform(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(N, 3) points under a 4x4 pose."""
    pose = np.asarray(pose, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ pose[:3, :3].T + pose[:3, 3]


def support_height(grasp_ann: dict[str, Any], vertices: np.ndarray, pose: np.ndarray) -> float | None:
    """The world y the grasped object stands on: ``support.height`` of the grasp ann.json; the object's
    lowest point under ``pose`` (frame 0) when the field is absent (older grasp shards); None when it is
    null (a ``hoigen grasp --no-table`` run: the object floats)."""
    if "support" in grasp_ann:
        support = grasp_ann["support"]
        return None if support is None else float(support["height"])
    return float(transform(vertices, pose)[:, 1].min())


def table_under(height: float, vertices: np.ndarray, pose: np.ndarray) -> Table:
    """The table with its top at ``height``, centred under the object (``vertices`` under ``pose``)."""
    world = transform(vertices, pose)
    centre = (world.min(axis=0) + world.max(axis=0)) / 2
    return Table(float(height), (float(centre[0]), float(centre[2])))


# ---------------------------------------------------------------------- convex footprints
def footprint(points_world: np.ndarray) -> np.ndarray:
    """(K, 2) counter-clockwise convex hull of the points projected on the table plane (world x, z)."""
    xz = np.asarray(points_world, dtype=np.float64)[:, [0, 2]]
    try:
        return xz[ConvexHull(xz).vertices]
    except (QhullError, ValueError):  # flat or too few points: the bounding rectangle
        lo, hi = xz.min(axis=0), xz.max(axis=0)
        return np.array([lo, [hi[0], lo[1]], hi, [lo[0], hi[1]]])


def _separated(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex polygons (K, 2): True when some edge normal separates them."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
        pa, pb = a @ normals.T, b @ normals.T
        if ((pa.max(axis=0) < pb.min(axis=0)) | (pb.max(axis=0) < pa.min(axis=0))).any():
            return True
    return False


def _point_segment_distance(points: np.ndarray, poly: np.ndarray) -> float:
    """Smallest distance from any of ``points`` (N, 2) to the edges of the polygon ``poly`` (K, 2)."""
    a = poly[None, :, :]
    ab = np.roll(poly, -1, axis=0)[None, :, :] - a
    ap = points[:, None, :] - a
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-18), 0.0, 1.0)
    return float(np.linalg.norm(ap - t[..., None] * ab, axis=-1).min())


def polygon_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two convex polygons (K, 2); 0 when they overlap or touch."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not _separated(a, b):
        return 0.0
    return min(_point_segment_distance(a, b), _point_segment_distance(b, a))


# ---------------------------------------------------------------------- the hand's swept volume
def hand_sweep(vertices_per_frame: Sequence[np.ndarray], steps: int = SWEEP_STEPS) -> np.ndarray:
    """(N, 3) points of the hand's swept volume: every vertex of every frame and ``steps - 1`` linear
    in-between poses per pair of consecutive frames (the vertices correspond from frame to frame)."""
    frames = [np.asarray(v, dtype=np.float64).reshape(-1, 3) for v in vertices_per_frame]
    if not frames:
        return np.zeros((0, 3))
    parts = [frames[0]]
    for a, b in zip(frames, frames[1:], strict=False):
        parts += [a + (b - a) * (k / steps) for k in range(1, steps + 1)]
    return np.concatenate(parts, axis=0)


@dataclass(frozen=True)
class Shape:
    """A mesh's convex hull in its own frame: vertices and outward unit face planes (n . p + d <= 0 inside)."""

    vertices: np.ndarray  # (H, 3) hull vertices
    planes: np.ndarray  # (F, 4)
    base: float  # lowest y of the mesh (its frame)
    radius: float = field(default=0.0)  # largest distance of a hull vertex from the mesh frame's y axis

    @classmethod
    def of(cls, vertices: np.ndarray) -> Shape:
        v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
        hull = ConvexHull(v)
        hv = v[hull.vertices]
        return cls(hv, np.asarray(hull.equations), float(v[:, 1].min()), float(np.hypot(hv[:, 0], hv[:, 2]).max()))

    def near(self, points_local: np.ndarray, clearance: float) -> bool:
        """True when a point (in the mesh frame) lies within ``clearance`` of the hull (or inside it)."""
        if not len(points_local):
            return False
        signed = points_local @ self.planes[:, :3].T + self.planes[:, 3]
        return bool((signed.max(axis=1) < clearance).any())


def resting_pose(shape: Shape, x: float, z: float, yaw: float, height: float) -> np.ndarray:
    """Mesh frame -> world: turned by ``yaw`` about y, its mesh frame's y axis at world (x, z), its lowest
    point on the plane y = ``height`` (upright: the mesh's +y is the world's +y)."""
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    pose[:3, 3] = (x, height - shape.base, z)
    return pose


@dataclass(frozen=True)
class Placement:
    """One placed distractor: the candidate's index in the list given to :func:`place_distractors`,
    its pose (mesh frame -> world) and its footprint on the table."""

    index: int
    pose: np.ndarray
    footprint: np.ndarray


def place_distractors(
    shapes: Sequence[Shape],
    count: int,
    table: Table,
    centre: tuple[float, float],
    obstacles: Sequence[np.ndarray],
    sweep: np.ndarray,
    rng: np.random.Generator,
    *,
    clearance: float = CLEARANCE,
    radius: float = PLACEMENT_RADIUS,
    tries: int = PLACEMENT_TRIES,
) -> list[Placement]:
    """Up to ``count`` distractors on ``table`` around ``centre`` (world x, z), each a different one of
    ``shapes`` (tried in a seeded order; one that finds no free spot in ``tries`` draws is passed over).

    ``obstacles`` are footprints (K, 2) already on the table (the grasped object under each of its
    poses); ``sweep`` (N, 3) is the hand's swept volume (:func:`hand_sweep`). The rules are the module
    docstring's. Fewer than ``count`` come back when the table around the object is full."""
    placed: list[Placement] = []
    blocked = [np.asarray(o, dtype=np.float64) for o in obstacles]
    sweep = np.asarray(sweep, dtype=np.float64).reshape(-1, 3)
    for index in rng.permutation(len(shapes)):
        if len(placed) >= count:
            break
        shape = shapes[int(index)]
        for _ in range(tries):
            r = radius * np.sqrt(rng.uniform())
            angle, yaw = rng.uniform(0, 2 * np.pi, size=2)
            x, z = centre[0] + r * np.cos(angle), centre[1] + r * np.sin(angle)
            pose = resting_pose(shape, x, z, yaw, table.height)
            foot = footprint(transform(shape.vertices, pose))
            if not table.holds(foot) or any(polygon_distance(foot, o) < clearance for o in blocked):
                continue
            near = sweep[np.hypot(sweep[:, 0] - x, sweep[:, 2] - z) < shape.radius + clearance]
            if shape.near(transform(near, np.linalg.inv(pose)), clearance):
                continue
            placed.append(Placement(int(index), pose, foot))
            blocked.append(foot)
            break
    return placed
