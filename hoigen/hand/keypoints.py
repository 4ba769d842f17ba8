"""Hand keypoint orders: the common 21-joint order of every annotation, and MANO's own 16 joints.

Annotations (``hand.joints3d``, ``hand.joints2d``) use the common 21-keypoint order: the wrist, then
thumb, index, middle, ring and pinky, each from its base to its tip. MANO's kinematic tree has 16
joints in another order (wrist; index1-3; middle1-3; pinky1-3; ring1-3; thumb1-3) and no fingertips:
the tips are vertices of the mesh. :func:`joints21_from_mano` is the one place that maps between them.
"""

from __future__ import annotations

import numpy as np

FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")

HAND_JOINT_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{finger}{part}" for finger in FINGERS for part in ("1", "2", "3", "_tip")
)

# (parent, child) pairs in the 21 order: the wrist to each finger base, then along each finger.
HAND_BONES: tuple[tuple[int, int], ...] = tuple(
    pair
    for f in range(5)
    for pair in ((0, 1 + 4 * f), (1 + 4 * f, 2 + 4 * f), (2 + 4 * f, 3 + 4 * f), (3 + 4 * f, 4 + 4 * f))
)

MANO_JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)  # fmt: skip

# MANO's parent of each of its 16 joints (row 0 of kintree_table; -1 for the root).
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

# Fingertip vertex ids of the real MANO v1.2 mesh (778 vertices), in thumb, index, middle, ring, pinky order.
REAL_MANO_TIP_IDS: tuple[int, ...] = (744, 320, 443, 554, 671)

# For each of the 21 joints: its MANO joint index, or -(1 + k) for the tip of finger k (FINGERS order).
_SOURCE_21: tuple[int, ...] = tuple(
    [0]
    + [
        i
        for k, finger in enumerate(FINGERS)
        for i in (
            MANO_JOINT_NAMES.index(f"{finger}1"),
            MANO_JOINT_NAMES.index(f"{finger}2"),
            MANO_JOINT_NAMES.index(f"{finger}3"),
            -(1 + k),
        )
    ]
)


def joints21_from_mano(joints16: np.ndarray, vertices: np.ndarray, tip_vertex_ids) -> np.ndarray:
    """Build the common 21 joints from MANO's 16 joints plus fingertip vertices.

    ``joints16`` is (..., 16, 3) in MANO order, ``vertices`` (..., V, 3) and ``tip_vertex_ids`` five
    vertex ids in thumb, index, middle, ring, pinky order. Works on numpy arrays and torch tensors.
    """
    tips = vertices[..., list(tip_vertex_ids), :]
    parts = [
        joints16[..., src : src + 1, :] if src >= 0 else tips[..., -src - 1 : -src, :] for src in _SOURCE_21
    ]
    if isinstance(joints16, np.ndarray):
        return np.concatenate(parts, axis=-2)
    import torch

    return torch.cat(parts, dim=-2)


def joint_index(name: str) -> int:
    """Index of a joint name in the common 21 order."""
    return HAND_JOINT_NAMES.index(name)
