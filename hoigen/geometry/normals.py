"""Surface normals from a depth image, coloured like render's ``normal.png``.

Real captures have no meshes, so their normal condition comes from the depth (DexYCB ingest; and
``hoigen render --normals estimated`` runs the same function on the rendered depth, as the original
HOIDiffusion code estimated normals from depth for training and synthesis alike): every pixel is
back-projected to a camera-frame point ``P = depth * K^-1 [u, v, 1]``; the points of each region
(hand, object: the segmentation's labels, so no normal mixes two surfaces across a silhouette) are
smoothed with a ``window`` x ``window`` box filter that counts only that region's valid pixels;
``n = (dP/du) x (dP/dv)`` from central differences ``window // 2`` pixels apart, turned to face the
camera (``n . P < 0``) and normalised. Near a silhouette a neighbour outside the region takes the
mean of the region's points in its window, so every pixel of the region gets a normal (as render's
maps cover the whole silhouette), and for a plane the result is exact whatever the window: means of
points of a plane lie in the plane. Pixels within ``window // 2`` of the image border get none.

Colours follow the shard contract (:mod:`hoigen.data.contract`, ControlNet v1.1 "normalbae"): with ``n`` the unit
normal in the OpenCV camera frame, ``RGB = round(127.5 - 127.5 * n)`` -- a surface facing the
camera squarely is (128, 128, 255) -- and (0, 0, 0) where there is no normal.
"""

from __future__ import annotations

import cv2
import numpy as np

from hoigen.data.contract import NORMAL_BACKGROUND, normal_colour


def depth_points(depth_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W, 3) camera-frame points of a metric depth image (pixel centres at integers)."""
    height, width = depth_m.shape
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    z = depth_m.astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=2)


def normals_from_depth(
    depth_m: np.ndarray,
    K: np.ndarray,
    labels: np.ndarray | None = None,
    window: int = 9,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit camera-frame normals (H, W, 3) facing the camera, and where they are defined (H, W) bool.

    ``labels`` (H, W) ints: normals are computed per label value > 0 from that label's pixels only;
    ``None`` treats every pixel with depth as one region. Pixels without depth get no normal.
    """
    depth_m = np.asarray(depth_m, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    valid = depth_m > 0
    regions = valid.astype(np.int32) if labels is None else np.where(valid, np.asarray(labels), 0)
    points = depth_points(depth_m, K)
    normals = np.zeros(points.shape, dtype=np.float64)
    defined = np.zeros(depth_m.shape, dtype=bool)
    window = max(1, int(window) | 1)
    step = max(1, window // 2)
    for label in np.unique(regions):
        if label == 0:
            continue
        mask = regions == label
        weight = cv2.boxFilter(
            mask.astype(np.float64), -1, (window, window), normalize=False, borderType=cv2.BORDER_CONSTANT
        )
        smooth = np.zeros_like(points)
        for axis in range(3):
            summed = cv2.boxFilter(
                np.where(mask, points[:, :, axis], 0.0),
                -1,
                (window, window),
                normalize=False,
                borderType=cv2.BORDER_CONSTANT,
            )
            smooth[:, :, axis] = summed / np.maximum(weight, 1e-12)
        du = _difference(smooth, step, axis=1)
        dv = _difference(smooth, step, axis=0)
        n = np.cross(du, dv)
        ok = mask & (np.linalg.norm(n, axis=2) > 0)
        normals[ok] = n[ok]
        defined |= ok
    length = np.linalg.norm(normals, axis=2, keepdims=True)
    normals = np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)
    facing = np.sum(normals * points, axis=2) > 0
    normals[facing] *= -1.0
    return normals, defined


def _difference(image: np.ndarray, step: int, axis: int) -> np.ndarray:
    """Central difference ``image[i + step] - image[i - step]`` along ``axis`` (0 at the borders)."""
    out = np.zeros_like(image)
    if axis == 1:
        out[:, step:-step] = image[:, 2 * step :] - image[:, : -2 * step]
    else:
        out[step:-step] = image[2 * step :] - image[: -2 * step]
    return out


def encode_normals(
    normals: np.ndarray, defined: np.ndarray, background: tuple[int, int, int] = NORMAL_BACKGROUND
) -> np.ndarray:
    """Unit normals -> (H, W, 3) uint8 RGB as render's ``normal.png``: ``round(127.5 - 127.5 n)``."""
    image = np.empty(normals.shape, dtype=np.uint8)
    image[:] = np.asarray(background, dtype=np.uint8)
    image[defined] = np.clip(np.round(normal_colour(normals[defined])), 0, 255).astype(np.uint8)
    return image
