"""The object's whole silhouette, including what falls outside the image (for BOP's ``px_count_all``,
``bbox_obj`` and ``visib_fract``, which bop_toolkit's ``calc_gt_info`` counts on a canvas three
times the image size, the image in its centre).

Stored by the render stage in ``ann.json`` as ``object.silhouette``:

- ``px_count``: pixels the object covers when rendered alone on that canvas.
- ``bbox``: ``[x0, y0, x1, y1]`` (x1, y1 exclusive) in image pixel coordinates, so it may reach
  below 0 or past the image size; ``[0, 0, 0, 0]`` when the silhouette is empty.

Inside the image the renderer's own amodal mask is used as it is (so the counts agree with
``amodal.png`` pixel for pixel); only when the projected mesh reaches past the image border are the
outer parts rasterised here, on the CPU (``cv2.fillConvexPoly`` per projected triangle, pixel
centres at integer coordinates). Triangles with a corner behind the near plane are left out.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

EMPTY_BOX = [0, 0, 0, 0]
CANVAS = 3  # canvas size in image sizes, as bop_toolkit's calc_gt_info
_SHIFT = 4  # sub-pixel bits for cv2's rasteriser


def silhouette(
    vertices: np.ndarray,
    faces: np.ndarray,
    mesh_to_cam: np.ndarray,
    K: np.ndarray,
    image_mask: np.ndarray,
    znear: float = 0.01,
) -> dict[str, Any]:
    """``{"px_count", "bbox"}`` of the mesh's full silhouette; ``image_mask`` (H,W) bool is the
    renderer's amodal object mask (the part inside the image)."""
    h, w = image_mask.shape
    m = np.asarray(mesh_to_cam, np.float64)
    cam = np.asarray(vertices, np.float64) @ m[:3, :3].T + m[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ np.asarray(K, np.float64).T)[:, :2] / z[:, None]
    front = z > znear
    inside = front.all() and uv[:, 0].min() >= -0.5 and uv[:, 0].max() < w - 0.5
    inside = inside and uv[:, 1].min() >= -0.5 and uv[:, 1].max() < h - 0.5
    if inside:
        full, offset = image_mask, (0, 0)
    else:
        full = np.zeros((CANVAS * h, CANVAS * w), np.uint8)
        offset = (w * (CANVAS - 1) // 2, h * (CANVAS - 1) // 2)
        tris = np.asarray(faces, np.int64)
        tris = tris[front[tris].all(axis=1)]
        pts = np.round((uv[tris] + offset) * (1 << _SHIFT))
        limit = float(1 << 24)  # far-off corners (near the near plane) are clamped, not overflowed
        pts = np.clip(pts, -limit, limit).astype(np.int32)
        for tri in pts:
            cv2.fillConvexPoly(full, tri, 1, lineType=cv2.LINE_8, shift=_SHIFT)
        full = full.astype(bool)
        full[offset[1] : offset[1] + h, offset[0] : offset[0] + w] = image_mask
    cols = np.flatnonzero(full.any(axis=0))
    if not len(cols):
        return {"px_count": 0, "bbox": list(EMPTY_BOX)}
    rows = np.flatnonzero(full.any(axis=1))
    ox, oy = offset
    box = [int(cols[0]) - ox, int(rows[0]) - oy, int(cols[-1]) + 1 - ox, int(rows[-1]) + 1 - oy]
    return {"px_count": int(full.sum()), "bbox": box}
