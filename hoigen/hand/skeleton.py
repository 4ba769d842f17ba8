"""The 2D hand skeleton condition image: coloured bones and joint dots on black.

Joint order is hoigen's common 21: 0 wrist; 1-4 thumb (base..tip); 5-8 index; 9-12 middle;
13-16 ring; 17-20 pinky. The 20 bones join each finger's base to the wrist and each joint to the
next one out along its finger.

Colours (RGB, :data:`SKELETON_PALETTE`), OpenPose-like: one hue per finger, spaced 72 degrees on
the hue circle (thumb red, index yellow-green, middle spring green, ring azure, pinky violet); the
wrist dot is white. A bone takes the colour of its finger; a joint dot takes the colour of its
finger, and is drawn on top of the bones. Lines are anti-aliased (``cv2.LINE_AA``), drawn with
sub-pixel precision in OpenCV's pixel convention (pixel centres at integers, like
:func:`hoigen.render.cameras.project`; this module is pure drawing, shared by render and ingest).
"""

from __future__ import annotations

import cv2
import numpy as np

from hoigen.errors import HoigenError
from hoigen.hand.keypoints import HAND_BONES

__all__ = [
    "HAND_BONES",
    "SKELETON_PALETTE",
    "bone_color",
    "default_line_width",
    "draw_skeleton",
    "joint_color",
]

# Wrist, then thumb, index, middle, ring, pinky (RGB, uint8).
SKELETON_PALETTE: dict[str, tuple[int, int, int]] = {
    "wrist": (255, 255, 255),
    "thumb": (255, 0, 0),
    "index": (204, 255, 0),
    "middle": (0, 255, 102),
    "ring": (0, 102, 255),
    "pinky": (204, 0, 255),
}
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")
_SHIFT = 4  # cv2 fixed-point bits: 1/16 px precision


def joint_color(joint: int) -> tuple[int, int, int]:
    """RGB colour of joint ``joint`` (0..20)."""
    return SKELETON_PALETTE["wrist"] if joint == 0 else SKELETON_PALETTE[_FINGERS[(joint - 1) // 4]]


def bone_color(bone: tuple[int, int]) -> tuple[int, int, int]:
    """RGB colour of a bone: the colour of its finger (the finger of its outer joint)."""
    return joint_color(max(bone))


def default_line_width(width: int, height: int) -> int:
    """Line width in pixels for an image size: 1 px at <= 255 px, 3 px at 512 px, 6 px at 1024 px."""
    return max(1, int(round(min(width, height) / 170.0)))


def draw_skeleton(
    joints2d: np.ndarray,
    visible: np.ndarray | None,
    width: int,
    height: int,
    line_width: int | None = None,
) -> np.ndarray:
    """Draw the hand skeleton: (H,W,3) uint8 RGB on black.

    A joint is drawn where ``visible`` is true, a bone where both its ends are; ``visible=None``
    draws everything. Non-finite joints are never drawn.
    """
    pts = np.asarray(joints2d, dtype=np.float64)
    if pts.shape != (21, 2):
        raise HoigenError(f"skeleton: joints2d has shape {pts.shape}, expected (21, 2); pass 21 joints")
    vis = np.ones(21, dtype=bool) if visible is None else np.asarray(visible, dtype=bool).reshape(21)
    vis = vis & np.all(np.isfinite(pts), axis=1) & np.all(np.abs(pts) < 1e6, axis=1)
    lw = default_line_width(width, height) if line_width is None else max(1, int(line_width))
    radius = max(1, int(round(1.5 * lw)))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    fixed = np.round(pts * (1 << _SHIFT)).astype(np.int64) if vis.any() else None
    for a, b in HAND_BONES:
        if vis[a] and vis[b]:
            cv2.line(image, tuple(map(int, fixed[a])), tuple(map(int, fixed[b])), bone_color((a, b)),
                     thickness=lw, lineType=cv2.LINE_AA, shift=_SHIFT)
    for j in range(21):
        if vis[j]:
            cv2.circle(image, tuple(map(int, fixed[j])), radius << _SHIFT, joint_color(j),
                       thickness=-1, lineType=cv2.LINE_AA, shift=_SHIFT)
    return image
