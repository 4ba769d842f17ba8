"""Exact surface geometry behind the pixel maps: face ids, ray-triangle hits, shading normals.

The renderer rasterises each triangle with a unique flat colour (its *face id*). For every pixel
the id names the triangle under the pixel centre; intersecting the pixel's ray with that
triangle's plane then gives the exact 3D point (depth, NOCS) and its barycentric coordinates
(smooth normals) without the quantisation of a depth buffer or of 8-bit colour channels.

Face ids are 24-bit: RGB = (id & 255, (id >> 8) & 255, (id >> 16) & 255); 0 is the background.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MAX_FACE_ID = (1 << 24) - 1


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """Integer ids (N,) in [0, 2^24) -> RGBA uint8 (N,4), alpha 255."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255, np.full_like(ids, 255)], -1).astype(
        np.uint8
    )


def decode_ids(rgb: np.ndarray) -> np.ndarray:
    """RGB or RGBA uint8 (...,3|4) -> integer ids (...) (RGBA: one 32-bit view, alpha masked off)."""
    rgb = np.asarray(rgb)
    if rgb.ndim >= 1 and rgb.shape[-1] == 4 and rgb.dtype == np.uint8 and sys.byteorder == "little":
        return (np.ascontiguousarray(rgb).view(np.uint32)[..., 0] & 0xFFFFFF).astype(np.int64)
    r, g, b = (rgb[..., k].astype(np.int64) for k in range(3))
    return r | (g << 8) | (b << 16)


def face_normals(triangles: np.ndarray) -> np.ndarray:
    """Unit normals (F,3) of triangles (F,3,3) by the right-hand rule; zero for degenerate faces."""
    n = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def corner_normals(vertices: np.ndarray, faces: np.ndarray, crease_deg: float | None = 45.0) -> np.ndarray:
    """Shading normals per face corner (F,3,3), smooth across edges and sharp at creases.

    Two faces sharing an edge (vertices merged by position) are smoothed together at that edge's
    corners when their normals differ by less than ``crease_deg``; each smooth group of corners
    takes the area-weighted mean of its faces' normals. ``crease_deg=None`` gives flat face normals.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    tris = vertices[faces]
    n_area = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    n_unit = face_normals(tris)
    if crease_deg is None or len(faces) == 0:
        return np.repeat(n_unit[:, None, :], 3, axis=1)
    _, merged = np.unique(vertices, axis=0, return_inverse=True)
    fm = merged.reshape(-1)[faces]
    n_faces = len(faces)
    loc_a, loc_b = np.array([0, 1, 2]), np.array([1, 2, 0])
    pa, pb = fm[:, loc_a].ravel(), fm[:, loc_b].ravel()
    base = np.repeat(np.arange(n_faces) * 3, 3)
    ca, cb = base + np.tile(loc_a, n_faces), base + np.tile(loc_b, n_faces)
    a_first = pa <= pb
    lo, hi = np.where(a_first, pa, pb), np.where(a_first, pb, pa)
    c_lo, c_hi = np.where(a_first, ca, cb), np.where(a_first, cb, ca)
    order = np.lexsort((hi, lo))
    lo_s, hi_s = lo[order], hi[order]
    same = (lo_s[1:] == lo_s[:-1]) & (hi_s[1:] == hi_s[:-1]) & (lo_s[1:] != hi_s[1:])
    i, j = order[:-1][same], order[1:][same]
    smooth = np.sum(n_unit[i // 3] * n_unit[j // 3], axis=1) >= np.cos(np.deg2rad(crease_deg))
    i, j = i[smooth], j[smooth]
    rows = np.concatenate([c_lo[i], c_hi[i]])
    cols = np.concatenate([c_lo[j], c_hi[j]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(3 * n_faces, 3 * n_faces))
    n_groups, labels = connected_components(graph, directed=False)
    corner_area_normals = np.repeat(n_area, 3, axis=0)
    sums = np.stack([np.bincount(labels, corner_area_normals[:, k], n_groups) for k in range(3)], -1)
    out = sums[labels]
    length = np.linalg.norm(out, axis=1, keepdims=True)
    fallback = np.repeat(n_unit, 3, axis=0)
    out = np.where(length > 1e-12, out / np.maximum(length, 1e-300), fallback)
    return out.reshape(n_faces, 3, 3)


@dataclass
class FacePlanes:
    """Per-face data for fast ray-plane hits: a corner, the (unnormalised) normal, unit normal and
    the dual edge vectors that turn ``p - v0`` into barycentric coordinates (b1, b2)."""

    v0: np.ndarray  # (F,3)
    normal: np.ndarray  # (F,3) cross(e1, e2)
    unit: np.ndarray  # (F,3)
    g1: np.ndarray  # (F,3)
    g2: np.ndarray  # (F,3)


def face_planes(triangles: np.ndarray) -> FacePlanes:
    """Precompute :class:`FacePlanes` for triangles (F,3,3)."""
    triangles = np.asarray(triangles, dtype=np.float64)
    v0 = triangles[:, 0]
    e1, e2 = triangles[:, 1] - v0, triangles[:, 2] - v0
    d00, d01, d11 = np.sum(e1 * e1, 1), np.sum(e1 * e2, 1), np.sum(e2 * e2, 1)
    den = d00 * d11 - d01 * d01
    inv = np.divide(1.0, den, out=np.zeros_like(den), where=den > 0)[:, None]
    n = np.cross(e1, e2)
    return FacePlanes(
        v0=v0,
        normal=n,
        unit=face_normals(triangles),
        g1=(d11[:, None] * e1 - d01[:, None] * e2) * inv,
        g2=(d00[:, None] * e2 - d01[:, None] * e1) * inv,
    )


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def hit_planes(
    origin: np.ndarray, directions: np.ndarray, planes: FacePlanes, face: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersect rays ``origin + t * directions`` (N,3) with the planes of faces ``face`` (N,).

    Returns t (N,) (inf where the ray is parallel to the plane), barycentric coordinates (N,3) of
    the hit in its triangle (unclipped; within float error of [0,1] for a rasterised hit) and the
    unit face normals (N,3) turned against the ray (so back faces are flipped).
    """
    v0, n = planes.v0[face], planes.normal[face]
    denom = _dot(n, directions)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = _dot(n, v0 - origin) / denom
    t[~np.isfinite(t)] = np.inf
    w = origin - v0 + np.where(np.isfinite(t), t, 0.0)[:, None] * directions
    b1, b2 = _dot(w, planes.g1[face]), _dot(w, planes.g2[face])
    unit = planes.unit[face] * np.where(denom > 0, -1.0, 1.0)[:, None]
    return t, np.stack([1.0 - b1 - b2, b1, b2], axis=1), unit


def interpolate_normals(corner: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of corner normals (N,3,3) at (N,3), clipped into the triangle and
    renormalised."""
    b = np.clip(bary, 0.0, 1.0)
    b = b / np.maximum(b.sum(axis=1, keepdims=True), 1e-12)
    n = np.einsum("nk,nkc->nc", b, corner)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)
