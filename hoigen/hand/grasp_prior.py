"""A prior over grasping hand poses: sampled within the joint limits, summarised by a PCA.

:func:`sample_grasp_angles` draws anatomical joint angles (flexion, abduction, twist per MANO
finger joint; see :mod:`hoigen.hand.limits`) of grasp-like hands from a few synergies that
describe most human grasps: an overall closure, a mix between a power grip (all three finger
joints flex together) and a precision grip (the knuckles flex, the finger joints stay straighter),
per-finger deviations that grow toward the pinky, the fingers' spread, and the thumb's opposition.
Every sample is kept inside the limits with a margin. :func:`pose_pca` maps the samples to MANO
axis-angle poses and fits MANO's ``hands_components`` (orthonormal rows, largest variance first),
``hands_mean`` and the standard deviation of each coefficient.
"""

from __future__ import annotations

import numpy as np

from hoigen.hand.limits import JointSpace, finger_joint_rows

# Flexion (degrees) of joints 1..3 of the index..pinky at full closure: power and precision grips.
_POWER = np.array([80.0, 95.0, 60.0])
_PRECISION = np.array([70.0, 35.0, 15.0])
_SPREAD_DEG = {"index": 9.0, "middle": 0.0, "ring": -7.0, "pinky": -14.0}  # > 0: toward the thumb


def sample_grasp_angles(space: JointSpace, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 15, 3) anatomical angles (radians) of grasp-like hands within ``space``'s limits."""
    # Beta(2, 2) synergies: mean +- 2 sd stays inside [0, 1], so PCA poses at +-2 sd stay in range.
    closure = rng.beta(2.0, 2.0, n)
    precision = rng.beta(2.0, 2.0, n)
    spread = -0.5 + 1.5 * rng.beta(2.0, 2.0, n)
    opposition = np.clip(closure * 0.6 + 0.6 * rng.beta(2.0, 2.0, n), 0.0, 1.0)
    angles = np.zeros((n, 15, 3))
    for k, finger in enumerate(("index", "middle", "ring", "pinky")):
        rows = finger_joint_rows(finger)
        own = np.clip(closure + rng.normal(0.0, 0.08 + 0.04 * k, n), 0.0, 1.0)
        profile = (1 - precision)[:, None] * _POWER + precision[:, None] * _PRECISION
        flex = own[:, None] * profile + rng.normal(0.0, 4.0, (n, 3))
        angles[:, rows, 0] = np.deg2rad(flex)
        angles[:, rows[0], 1] = np.deg2rad(spread * _SPREAD_DEG[finger] * (1 - 0.5 * own) + rng.normal(0, 2.0, n))
        angles[:, rows, 2] = np.deg2rad(rng.normal(0.0, 2.0, (n, 3)))
    rows = finger_joint_rows("thumb")
    thumb_close = np.clip(closure + rng.normal(0.0, 0.15, n), 0.0, 1.0)
    angles[:, rows[0], 0] = np.deg2rad(opposition * 40.0 + rng.normal(0, 4.0, n))
    angles[:, rows[0], 1] = np.deg2rad(opposition * 30.0 - 5.0 + rng.normal(0, 4.0, n))
    angles[:, rows[0], 2] = np.deg2rad(opposition * 15.0 + rng.normal(0, 3.0, n))
    angles[:, rows[1], 0] = np.deg2rad(thumb_close * 40.0 + rng.normal(0, 4.0, n))
    angles[:, rows[2], 0] = np.deg2rad(thumb_close * 55.0 + rng.normal(0, 5.0, n))
    angles[:, rows[1:], 1:] = np.deg2rad(rng.normal(0.0, 2.0, (n, 2, 2)))
    margin = 0.15 * (space.upper - space.lower)
    return np.clip(angles, space.lower + margin, space.upper - margin)


def pose_pca(space: JointSpace, rng: np.random.Generator, n: int = 4000):
    """(components (45, 45), mean (45,), sd (45,)) of MANO poses of sampled grasps.

    Rows of ``components`` are orthonormal, sorted by decreasing variance; a pose is
    ``mean + coefficients @ components`` with coefficient i of standard deviation ``sd[i]``.
    """
    poses = space.to_pose(sample_grasp_angles(space, rng, n))
    mean = poses.mean(axis=0)
    _, s, vt = np.linalg.svd(poses - mean, full_matrices=True)
    sd = np.zeros(45)
    sd[: len(s)] = s / np.sqrt(n - 1)
    # Directions the samples never vary along (sd ~ 0) come out of the SVD in an arbitrary basis
    # that differs between CPUs; replace it by a canonical one (Gram-Schmidt of the projector's columns).
    rank = int((sd > 1e-9 * sd[0]).sum())
    vt[rank:] = _canonical_basis(vt[rank:])
    # A deterministic sign: the largest entry of each component is positive.
    signs = np.sign(vt[np.arange(45), np.abs(vt).argmax(axis=1)])
    return vt * signs[:, None], mean, sd


def _canonical_basis(rows: np.ndarray) -> np.ndarray:
    """An orthonormal basis (k, d) of the span of ``rows`` (k, d) that does not depend on which basis
    came in: Gram-Schmidt over the span's projector columns, taken in index order."""
    projector = rows.T @ rows
    basis: list[np.ndarray] = []
    for column in projector.T:
        v = column - sum((b @ column) * b for b in basis) if basis else column.copy()
        norm = np.linalg.norm(v)
        if norm > 1e-6:
            basis.append(v / norm)
        if len(basis) == len(rows):
            break
    return np.asarray(basis).reshape(rows.shape)
