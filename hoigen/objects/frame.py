"""The canonical object frame: metres, the object's up axis on +y (NOCS convention), then NOCS.

A source file may put its object's up axis anywhere: YCB and BOP models are z-up, glTF and hoigen
are y-up. ``upright_rotation(up)`` is the proper rotation that takes the source axis ``up`` to +y
(and keeps the frame right-handed); the loader applies it, with the unit scale, to the vertices and
records the product as ``ObjectAsset.mesh_from_source``. ``nocs_transform`` (in ``asset``) then
centres the upright mesh's bounding box and scales its diagonal to 1.
"""

from __future__ import annotations

import numpy as np

from hoigen.errors import HoigenError

# source up axis -> rotation (rows: new x, y, z in source coordinates) taking it to +y
_UP = {
    "+y": np.eye(3),
    "-y": np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]]),
    "+z": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # (x, y, z) -> (x, z, -y), as BOP <- hoigen
    "-z": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    "+x": np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]),
    "-x": np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
}
UP_AXES: tuple[str, ...] = tuple(_UP)


def parse_up(up: str) -> str:
    """Normalise ``"z"``, ``"+Z"``, ``"-y"`` ... to one of ``UP_AXES`` or raise a one-line error."""
    text = str(up).strip().lower()
    key = text if text[:1] in "+-" else "+" + text
    if key not in _UP:
        raise HoigenError(f"up axis {up!r} is not one of {', '.join(UP_AXES)}; give the axis that points up")
    return key


def upright_rotation(up: str) -> np.ndarray:
    """3x3 rotation taking the source axis ``up`` to +y."""
    return _UP[parse_up(up)].copy()


def mesh_from_source(up: str, scale: float) -> np.ndarray:
    """4x4 ``scale * upright_rotation(up)``: source file coordinates -> hoigen mesh frame."""
    m = np.eye(4)
    m[:3, :3] = float(scale) * upright_rotation(up)
    return m


UPRIGHT_CATEGORIES = ("bottle", "can", "mug", "bowl")  # bodies of revolution that stand on their base
SYMMETRY_BINS = 36


def roundness(vertices: np.ndarray, faces: np.ndarray, axis: int, samples: int = 4000) -> float:
    """How far a mesh is from round about mesh axis ``axis`` (0 = a body of revolution, larger = less round).

    The surface (area-weighted, deterministic samples) is seen along the axis from its area centroid;
    per angular bin the farthest point gives the outline radius, and the score is the median
    deviation of those radii from their median, relative to it (robust to a mug's handle).
    """
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False, validate=False)
    points, _ = trimesh.sample.sample_surface(mesh, samples, seed=0)
    others = [k for k in range(3) if k != axis]
    flat = points[:, others] - points[:, others].mean(axis=0)
    angle = np.floor((np.arctan2(flat[:, 1], flat[:, 0]) + np.pi) / (2 * np.pi) * SYMMETRY_BINS).astype(int)
    radius = np.linalg.norm(flat, axis=1)
    outline = np.zeros(SYMMETRY_BINS)
    np.maximum.at(outline, np.clip(angle, 0, SYMMETRY_BINS - 1), radius)
    outline = outline[outline > 0]
    mid = float(np.median(outline))
    return float(np.median(np.abs(outline - mid)) / mid) if mid > 0 else float("inf")


def lying_axis(vertices: np.ndarray, faces: np.ndarray) -> int | None:
    """The mesh axis (0 x, 2 z) a body of revolution turns about when it is clearly not +y, else None.

    A standing bottle, can, mug or bowl is round about +y; one lying on its side is round about a
    horizontal axis and not about +y.
    """
    scores = [roundness(vertices, faces, k) for k in range(3)]
    best = int(np.argmin(scores))
    if best != 1 and scores[best] < 0.1 and scores[1] > 1.6 * scores[best] + 0.02:
        return best
    return None
