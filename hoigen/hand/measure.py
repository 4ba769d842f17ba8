"""Measurements of a posed hand: anthropometric lengths, and how much the skin passes through itself.

:func:`hand_measurements` reads the lengths that anthropometric surveys report off a flat hand
(hand length, hand breadth, palm length, finger and segment lengths, finger thickness), from the
21 joints and the skin. :func:`self_intersection` counts skin vertices that lie inside the rest
of the hand, using the generalised winding number of the closed skin at each vertex (about 0.5 on
a clean surface, about 1.5 for a vertex buried inside another part, below 0 where the skin has
folded inside out).
"""

from __future__ import annotations

import numpy as np

from hoigen.hand.keypoints import FINGERS, joint_index

_SEGMENTS = ("", "_middle", "_distal")
_THUMB_SEGMENTS = ("thumb_metacarpal", "thumb", "thumb_distal")


def winding_numbers(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Generalised winding number (N,) of closed triangle mesh at ``points`` (Jacobson et al. 2013).

    A triangle that has the query point as a corner contributes nothing, so a mesh vertex queried
    on a smooth part of its own surface gets about 0.5."""
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    out = np.zeros(len(points))
    for s in range(0, len(points), chunk):
        q = np.asarray(points[s : s + chunk], dtype=np.float64)[:, None]
        ax, ay, az = (tri[None, :, 0, i] - q[..., i] for i in range(3))
        bx, by, bz = (tri[None, :, 1, i] - q[..., i] for i in range(3))
        cx, cy, cz = (tri[None, :, 2, i] - q[..., i] for i in range(3))
        la = np.sqrt(ax * ax + ay * ay + az * az)
        lb = np.sqrt(bx * bx + by * by + bz * bz)
        lc = np.sqrt(cx * cx + cy * cy + cz * cz)
        det = ax * (by * cz - bz * cy) - ay * (bx * cz - bz * cx) + az * (bx * cy - by * cx)
        den = (la * lb * lc + (ax * bx + ay * by + az * bz) * lc + (bx * cx + by * cy + bz * cz) * la
               + (cx * ax + cy * ay + cz * az) * lb)  # fmt: skip
        corner = (la < 1e-12) | (lb < 1e-12) | (lc < 1e-12)
        angle = np.where(corner, 0.0, 2.0 * np.arctan2(det, den))
        out[s : s + chunk] = angle.sum(axis=1) / (4 * np.pi)
    return out


def self_intersection(vertices: np.ndarray, faces: np.ndarray, rest, threshold: float = 0.5) -> np.ndarray:
    """(V,) bool: skin vertices that another part of the skin has passed over since the rest pose.

    The winding number of the closed skin at each of its own vertices changes by about +1 when the
    vertex ends up inside another part of the hand and by about -1 where the skin folds inside
    out; smooth bending changes it by a few tenths at most. A vertex counts when the change exceeds
    ``threshold``. ``rest`` is the rest pose's vertices (V, 3), or their winding numbers (V,) from
    :func:`winding_numbers` to skip recomputing them."""
    w = winding_numbers(vertices, vertices, faces)
    rest = np.asarray(rest, dtype=np.float64)
    w0 = rest if rest.ndim == 1 else winding_numbers(rest, rest, faces)
    return np.abs(w - w0) > threshold


def hand_measurements(joints: np.ndarray, vertices: np.ndarray) -> dict[str, float]:
    """Lengths in millimetres of a flat hand from its 21 joints (common order) and skin vertices.

    ``hand_length``: wrist joint to the middle fingertip; ``hand_breadth``: the skin's extent
    across the palm at the knuckles (perpendicular to the wrist-middle axis, in the palm plane,
    within 2 cm of the index and pinky knuckles, so not the thumb);
    ``palm_length``: wrist joint to the middle knuckle (MCP); ``<finger>``, ``<finger>_middle``,
    ``<finger>_distal``: joint 1-2, 2-3 and 3-tip distances (the thumb's first is
    ``thumb_metacarpal``, CMC-MCP); ``<finger>_length``: joint 1 to the tip; ``finger_thickness``:
    the mean skin radius of index..pinky around their proximal segments' midpoints.
    """
    j = np.asarray(joints, dtype=np.float64)
    v = np.asarray(vertices, dtype=np.float64)
    mm = 1000.0
    out: dict[str, float] = {}
    wrist, middle1 = j[0], j[joint_index("middle1")]
    forward = (middle1 - wrist) / np.linalg.norm(middle1 - wrist)
    out["hand_length"] = float(np.linalg.norm(j[joint_index("middle_tip")] - wrist) * mm)
    out["palm_length"] = float(np.linalg.norm(middle1 - wrist) * mm)
    lateral = j[joint_index("index1")] - j[joint_index("pinky1")]
    lateral -= forward * (lateral @ forward)
    lateral /= np.linalg.norm(lateral)
    knuckles = np.mean([j[joint_index(f"{f}1")] for f in FINGERS[1:]], axis=0)
    band = np.abs((v - knuckles) @ forward) < 0.006
    across = (v[band] - knuckles) @ lateral
    ends = [(j[joint_index(f"{f}1")] - knuckles) @ lateral for f in ("pinky", "index")]
    across = across[(across > ends[0] - 0.02) & (across < ends[1] + 0.02)]  # not the thumb
    out["hand_breadth"] = float((across.max() - across.min()) * mm)
    for finger in FINGERS:
        base = joint_index(f"{finger}1")
        names = _THUMB_SEGMENTS if finger == "thumb" else tuple(finger + s for s in _SEGMENTS)
        for i, name in enumerate(names):
            out[name] = float(np.linalg.norm(j[base + i + 1] - j[base + i]) * mm)
        out[f"{finger}_length"] = float(np.linalg.norm(j[base + 3] - j[base]) * mm)
    radii = []
    for finger in FINGERS[1:]:
        a, b = j[joint_index(f"{finger}1")], j[joint_index(f"{finger}2")]
        axis = (b - a) / np.linalg.norm(b - a)
        mid = (a + b) / 2
        rel = v - mid
        along = rel @ axis
        radial = np.linalg.norm(rel - along[:, None] * axis, axis=1)
        ring = (np.abs(along) < 0.004) & (radial < 0.015)
        radii.append(radial[ring].mean())
    out["finger_thickness"] = float(np.mean(radii) * 2 * mm)
    return out
