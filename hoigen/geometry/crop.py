"""Square crops of an image with the intrinsics and 2D points following.

Two crops, both a square window ``[x0, x0 + side) x [y0, y0 + side)`` of pixels scaled to ``size``:

- :func:`centre_crop`: the centred square of the frame (``hoigen ingest dexycb --size``, like
  ``hoigen render --camera dexycb --size``);
- :func:`hoi_crop`: the hand-object box (the pixels of the hand and the grasped object in
  ``seg.png``) grown by ``margin`` of its longer side on each side and padded to a square around its
  centre, as the original HOIDiffusion training data does. The window may reach past the frame:
  those pixels are padding (0: black image, no depth, background label, no normal). The whole box is
  always inside the window.

Pixel centres are at integers: a point ``u`` maps to ``s (u - x0 + 0.5) - 0.5`` with ``s = size / side``,
and ``K`` follows (:meth:`SquareCrop.intrinsics`), so projecting a 3D point with the new ``K`` lands
where the crop put its pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from hoigen.data.contract import SEG_HAND, SEG_OBJECT

HOI_MARGIN = 0.1  # the hand-object box grows by this fraction of its longer side on each side
HOI_LABELS = (SEG_HAND, SEG_OBJECT)  # seg.png labels of the hand-object box (other objects are left out)


@dataclass(frozen=True)
class SquareCrop:
    """The window ``[x0, x0 + side)`` x ``[y0, y0 + side)`` (may reach past the frame) scaled to ``size``."""

    x0: int
    y0: int
    side: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / self.side

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """``K`` of the cropped, scaled image."""
        s = self.scale
        out = np.array(K, dtype=np.float64)
        out[0, 0], out[1, 1] = s * out[0, 0], s * out[1, 1]
        out[0, 1] = s * out[0, 1]
        out[0, 2] = s * (out[0, 2] - self.x0 + 0.5) - 0.5
        out[1, 2] = s * (out[1, 2] - self.y0 + 0.5) - 0.5
        return out

    def points(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) pixel coordinates in the cropped, scaled image."""
        return self.scale * (np.asarray(uv, dtype=np.float64) - [self.x0, self.y0] + 0.5) - 0.5

    def apply(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """The window of ``image`` (zeros outside the frame) resized to ``size`` (nearest for labels/depth)."""
        height, width = image.shape[:2]
        window = np.zeros((self.side, self.side, *image.shape[2:]), dtype=image.dtype)
        ax0, ay0 = max(self.x0, 0), max(self.y0, 0)
        ax1, ay1 = min(self.x0 + self.side, width), min(self.y0 + self.side, height)
        if ax1 > ax0 and ay1 > ay0:
            window[ay0 - self.y0 : ay1 - self.y0, ax0 - self.x0 : ax1 - self.x0] = image[ay0:ay1, ax0:ax1]
        if self.size == self.side:
            return window
        interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
        return cv2.resize(window, (self.size, self.size), interpolation=interpolation)


def centre_crop(width: int, height: int, size: int) -> SquareCrop:
    """The centred square of a ``width`` x ``height`` frame, scaled to ``size``."""
    side = min(width, height)
    return SquareCrop((width - side) // 2, (height - side) // 2, side, int(size))


def hoi_box(seg: np.ndarray, labels: tuple[int, ...] = HOI_LABELS) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive ends, of the pixels of ``seg`` with one of ``labels``; None if none."""
    mask = np.isin(np.asarray(seg), labels)
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def hoi_crop(seg: np.ndarray, size: int | None = None, margin: float = HOI_MARGIN) -> SquareCrop | None:
    """The square around the hand-object box of ``seg`` (see the module docstring), scaled to ``size``
    (None: kept at its own side); None when ``seg`` shows neither hand nor object."""
    box = hoi_box(seg)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    longer = max(x1 - x0, y1 - y0)
    side = longer + 2 * math.ceil(margin * longer)
    crop_x0 = x0 - (side - (x1 - x0)) // 2
    crop_y0 = y0 - (side - (y1 - y0)) // 2
    return SquareCrop(crop_x0, crop_y0, side, int(size) if size else side)
