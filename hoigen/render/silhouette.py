"""The object's whole silhouette, including what falls outside the image (for BOP's ``px_count_all``,
``bbox_obj`` and ``visib_fract``, which bop_toolkit's ``calc_gt_info`` counts on a canvas three
times the image size, the image in its centre).

Stored by the render stage in ``ann.json`` as ``object.silhouette``:

- ``px_count``: pixels the object covers when rendered alone on that canvas.
- ``bbox``: ``[x0, y0, x1, y1]`` (x1, y1 exclusive) in image pixel coordinates, so it may reach
  below 0 or past the image size; ``[0, 0, 0, 0]`` when the silhouette is empty.

Inside the image the renderer's own amodal mask is used as it is (so the counts agree with
``amodal.png`` pixel for pixel); only when the projected mesh reaches past the image border are the
outer parts rasterised here, on the CPU: a pixel is covered when its centre (integer coordinates)
lies in a projected triangle, edges included. Triangles with a corner behind the near plane are
left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EMPTY_BOX = [0, 0, 0, 0]
CANVAS = 3  # canvas size in image sizes, as bop_toolkit's calc_gt_info
_CHUNK = 1 << 22  # (triangle, pixel) tests per batch


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
        offset = (w * (CANVAS - 1) // 2, h * (CANVAS - 1) // 2)
        tris = np.asarray(faces, np.int64)
        tris = tris[front[tris].all(axis=1)]
        full = _rasterise(uv[tris] + offset, (CANVAS * h, CANVAS * w))
        full[offset[1] : offset[1] + h, offset[0] : offset[0] + w] = image_mask
    cols = np.flatnonzero(full.any(axis=0))
    if not len(cols):
        return {"px_count": 0, "bbox": list(EMPTY_BOX)}
    rows = np.flatnonzero(full.any(axis=1))
    ox, oy = offset
    box = [int(cols[0]) - ox, int(rows[0]) - oy, int(cols[-1]) + 1 - ox, int(rows[-1]) + 1 - oy]
    return {"px_count": int(full.sum()), "bbox": box}


def _rasterise(tri_uv: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H,W) mask of the pixel centres inside any of the (T,3,2) triangles (edges included)."""
    h, w = shape
    out = np.zeros(h * w, bool)
    lo, hi = tri_uv.min(axis=1), tri_uv.max(axis=1)
    x0 = np.clip(np.ceil(lo[:, 0]), 0, w).astype(np.int64)
    x1 = np.clip(np.floor(hi[:, 0]), -1, w - 1).astype(np.int64)
    y0 = np.clip(np.ceil(lo[:, 1]), 0, h).astype(np.int64)
    y1 = np.clip(np.floor(hi[:, 1]), -1, h - 1).astype(np.int64)
    nx, ny = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
    counts = nx * ny
    keep = np.flatnonzero(counts)
    start = 0
    while start < len(keep):
        stop = start + max(1, int(np.searchsorted(np.cumsum(counts[keep[start:]]), _CHUNK)))
        sel = keep[start:stop]
        start = stop
        n = counts[sel]
        tri = np.repeat(np.arange(len(sel)), n)
        local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        px = x0[sel][tri] + local % nx[sel][tri]
        py = y0[sel][tri] + local // nx[sel][tri]
        a, b, c = (tri_uv[sel][tri, k] for k in range(3))
        p = np.stack([px, py], axis=1).astype(np.float64)

        e0, e1, e2 = _edge(a, b, p), _edge(b, c, p), _edge(c, a, p)
        inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
        out[py[inside] * w + px[inside]] = True
    return out.reshape(h, w)


def _edge(u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Which side of the edge u -> v each point p lies on (the 2D cross product)."""
    return (v[:, 0] - u[:, 0]) * (p[:, 1] - u[:, 1]) - (v[:, 1] - u[:, 1]) * (p[:, 0] - u[:, 0])
