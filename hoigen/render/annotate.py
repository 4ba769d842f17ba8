"""Annotations of a rendered frame from its exact surfaces: joint visibility and boxes (no GL).

- Joint visibility (:func:`joint_visibility`): a joint is *unhidden* when it is inside the image
  (u in [-0.5, W-0.5), v likewise), in front of the camera (z > znear) and not behind any other
  instance's surface (object, table, distractor) at its pixel by more than
  ``visibility_tolerance`` (default 1 cm). It is
  *self-occluded* when it lies deeper than the hand's own nearest surface at its pixel (the hand
  drawn alone, so the object does not count) by more than max(``self_occlusion_tolerance``
  (default 1.5 cm, about a finger's thickness), clearance + 5 mm), where clearance is the joint's
  distance to the nearest hand vertex (:func:`joint_clearance`; a joint sits inside the flesh:
  about 0.8 cm in a finger, more at the wrist). A joint seen through its own finger's skin stays
  visible; one behind another finger or the palm does not.
- Boxes (:func:`mask_bbox`): ``[x0, y0, x1, y1]`` integer pixel bounds of a mask with x1, y1
  exclusive (``mask[y0:y1, x0:x1]`` holds all of it; in continuous coordinates the box spans
  x0 - 0.5 .. x1 - 0.5), None for an empty mask.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hoigen.render.cameras import Camera


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    """``[x0, y0, x1, y1]`` of a boolean mask's pixels (x1, y1 exclusive); None when it is empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if len(cols) == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def joint_clearance(joints3d: np.ndarray, hand_vertices: np.ndarray) -> np.ndarray:
    """Distance (21,) from each joint to the nearest hand vertex (how deep it sits in the flesh)."""
    verts = np.asarray(hand_vertices, dtype=np.float64).reshape(-1, 3)
    if len(verts) == 0:
        return np.zeros(len(joints3d))
    d2 = (
        np.einsum("ij,ij->i", joints3d, joints3d)[:, None]
        - 2.0 * joints3d @ verts.T
        + np.einsum("ij,ij->i", verts, verts)[None, :]
    )
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def joint_visibility(
    joints2d: np.ndarray,
    joints_z: np.ndarray,
    cam: Camera,
    depth_at: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    clearance: np.ndarray,
    *,
    znear: float,
    visibility_tolerance: float,
    self_occlusion_tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(in the image and not hidden by another surface, self-occluded), both (21,) bool.

    ``depth_at(rows, cols)`` gives, at those pixels, the nearest depth of every non-hand instance
    together and of the hand alone (each inf where it does not cover the pixel)."""
    finite = np.all(np.isfinite(joints2d), axis=1)
    u, v = np.where(finite[:, None], joints2d, -1e9).T
    inside = (
        finite
        & (joints_z > znear)
        & (u >= -0.5) & (u < cam.width - 0.5)
        & (v >= -0.5) & (v < cam.height - 0.5)
    )
    self_occluded = np.zeros(len(inside), dtype=bool)
    if not inside.any():
        return inside, self_occluded
    col = np.clip(np.round(u[inside]).astype(np.int64), 0, cam.width - 1)
    row = np.clip(np.round(v[inside]).astype(np.int64), 0, cam.height - 1)
    z = joints_z[inside]
    surface, skin = depth_at(row, col)
    unhidden = inside.copy()
    unhidden[inside] = z <= surface + visibility_tolerance
    tolerance = np.maximum(self_occlusion_tolerance, clearance[inside] + 0.005)
    self_occluded[inside] = z > skin + tolerance
    return unhidden, self_occluded
