"""Umeyama's least-squares similarity (R, t, s) between point sets, and its use on NOCS maps.

A NOCS map gives, per object pixel, the point's coordinates in the object's normalised frame; the
depth map and K give the same point in the camera frame. The similarity ``p_cam = s R p_nocs + t``
that best maps one onto the other (Umeyama 1991, closed form through an SVD of the cross
covariance) is the object's pose and size. ``fit_nocs_pose`` adds a simple robust step: fit, drop
points whose residual exceeds ``trim`` times the median residual, fit again (no RANSAC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hoigen.errors import HoigenError


@dataclass
class Similarity:
    """``p_dst = s * R @ p_src + t``; ``inliers`` counts the points of the final fit."""

    R: np.ndarray
    t: np.ndarray
    s: float
    inliers: int = 0

    @property
    def matrix(self) -> np.ndarray:
        """4x4 with s*R in the upper-left block (the NOCS ``RT`` convention)."""
        m = np.eye(4)
        m[:3, :3] = self.s * self.R
        m[:3, 3] = self.t
        return m


def umeyama(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """The similarity minimising sum |dst - (s R src + t)|^2 over (N,3) point pairs."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise HoigenError(f"umeyama needs two (N,3) point sets with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_s = (a**2).sum() / len(src)
    if var_s <= 0:
        raise HoigenError("umeyama: the source points are all the same point; cannot fit a pose")
    cov = b.T @ a / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_s)
    t = mu_d - s * R @ mu_s
    return Similarity(R, t, s, len(src))


def backproject(depth_m: np.ndarray, K: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Camera-frame points (N,3) of the ``mask`` pixels (pixel centres at integer coordinates)."""
    v, u = np.nonzero(mask)
    z = depth_m[v, u]
    x = (u - K[0, 2]) * z / K[0, 0]
    y = (v - K[1, 2]) * z / K[1, 1]
    return np.stack([x, y, z], 1)


def fit_nocs_pose(
    nocs: np.ndarray, depth_m: np.ndarray, K: np.ndarray, mask: np.ndarray, trim: float = 3.0
) -> Similarity:
    """Pose and scale of one object from its NOCS coordinates (H,W,3 in [-0.5, 0.5]) and depth (metres).

    ``mask`` selects the object's pixels; pixels without depth are ignored. ``trim`` <= 0 turns the
    robust refit off.
    """
    mask = np.asarray(mask, bool) & (np.asarray(depth_m) > 0)
    if mask.sum() < 3:
        raise HoigenError(f"fit_nocs_pose: {int(mask.sum())} object pixels with depth; need at least 3")
    src = np.asarray(nocs, np.float64)[mask]
    dst = backproject(np.asarray(depth_m, np.float64), np.asarray(K, np.float64), mask)
    fit = umeyama(src, dst)
    if trim > 0:
        res = np.linalg.norm(dst - (fit.s * src @ fit.R.T + fit.t), axis=1)
        keep = res <= trim * max(float(np.median(res)), 1e-9)
        if 3 <= keep.sum() < len(src):
            fit = umeyama(src[keep], dst[keep])
    return fit
