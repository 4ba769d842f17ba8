"""Exact surface geometry behind the pixel maps: face ids, ray-triangle hits, shading normals.

Pure numpy (no GL): the renderer's GL passes (:mod:`hoigen.render.renderer`) rasterise each
triangle with a unique flat colour (its *face id*); everything after that happens here. For every
pixel the id names the triangle under the pixel centre; intersecting the pixel's ray with that
triangle's plane then gives the exact 3D point (depth, NOCS) and its barycentric coordinates
(smooth normals) without the quantisation of a depth buffer or of 8-bit colour channels
(:func:`pixel_hits`). Per pixel the nearest of the instances' hits (each instance drawn alone) is
the visible surface (:func:`composite`), and the maps are encoded as the shard contract says
(:func:`visible_maps`, :func:`normal_image`; :mod:`hoigen.data.contract`).

Face ids are 24-bit: RGB = (id & 255, (id >> 8) & 255, (id >> 16) & 255); 0 is the background.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hoigen.data.contract import encode_depth, encode_nocs, normal_colour
from hoigen.render.cameras import Camera

MAX_FACE_ID = (1 << 24) - 1
FACING_EPS = 0.02  # minimum |cos| between a normal and the reversed view ray


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


@dataclass
class MeshSurface:
    """CPU-side triangles and shading normals of one mesh, in the mesh's own frame."""

    triangles: np.ndarray  # (F,3,3)
    planes: FacePlanes
    shading: np.ndarray  # (F,3,3) shading normals per corner (the face normal three times when flat)
    smooth: bool  # False: the maps use the exact face normal (``crease_deg=None``)

    @property
    def corners(self) -> np.ndarray | None:
        """Corner normals to interpolate, None for flat face normals."""
        return self.shading if self.smooth else None


def mesh_surface(vertices: np.ndarray, faces: np.ndarray, crease_deg: float | None) -> MeshSurface:
    """Triangles, ray-hit planes and corner normals of a mesh (``crease_deg=None``: flat normals)."""
    triangles = vertices[faces]
    corners = corner_normals(vertices, faces, crease_deg)
    return MeshSurface(triangles, face_planes(triangles), corners, crease_deg is not None)


@dataclass
class Part:
    """One mesh instance of a frame as the hit maths sees it: its surface (mesh frame), the first
    face id it was drawn with (faces are ``first_id .. first_id + F - 1``), the world -> mesh frame
    transform, its ``seg.png`` id and its mesh -> NOCS transform (None: no NOCS, e.g. hand, table)."""

    surface: MeshSurface
    first_id: int
    frame_from_world: np.ndarray  # (4,4)
    seg_id: int
    nocs_from_mesh: np.ndarray | None = None


def pixel_hits(ids: np.ndarray, camera: Camera, parts: list[Part], want_nocs: bool) -> dict[str, np.ndarray]:
    """Exact depth, camera-frame normals (and NOCS) of every covered pixel of a face-id image.

    ``ids`` holds face ids of ``parts`` (every part drawn with its own id range, as :class:`Part`
    says; ids outside every range are ignored). Returns flat pixel indices ``pix`` (N,)
    (row * W + col), ``part`` (N,) (index into ``parts``), ``depth`` (N,), ``normal`` (N,3) and, with
    ``want_nocs``, ``nocs`` (N,3) (zero for parts without NOCS), in the order of ``pix``. Where a ray
    grazes its triangle's plane, the triangle's centroid stands in for the hit. Normals are
    interpolated barycentrically, back faces flipped, and normals that would point away from the
    camera near silhouettes are bent just enough to face it.
    """
    h, w = ids.shape
    K_inv = np.linalg.inv(camera.K)
    R, center = camera.world_to_cam[:3, :3], camera.center
    flat = ids.reshape(-1)
    out: dict[str, list[np.ndarray]] = {"pix": [], "part": [], "depth": [], "normal": [], "nocs": []}
    for index, part in enumerate(parts):
        geo, first = part.surface, part.first_id
        pix = np.flatnonzero((flat >= first) & (flat < first + len(geo.triangles)))
        if len(pix) == 0:
            continue
        face = flat[pix] - first
        rays = np.stack([pix % w, pix // w, np.ones(len(pix))], axis=1).astype(np.float64) @ K_inv.T
        A, b = part.frame_from_world[:3, :3], part.frame_from_world[:3, 3]
        origin = A @ center + b
        dirs = rays @ (A @ R.T).T  # camera ray -> world -> this mesh's frame
        t, bary, facing = hit_planes(origin, dirs, geo.planes, face)
        bad = ~np.isfinite(t) | (t <= 0)
        if np.any(bad):  # a ray grazing its triangle's plane: the triangle's centroid along the ray
            centroid = geo.triangles[face[bad]].mean(axis=1) - origin
            t[bad] = np.einsum("ij,ij->i", centroid, dirs[bad]) / np.einsum("ij,ij->i", dirs[bad], dirs[bad])
        if geo.corners is None:
            n_frame = facing
        else:
            n_frame = interpolate_normals(geo.corners[face], bary)
            side = np.einsum("ij,ij->i", n_frame, facing)
            n_frame *= np.where(side < 0, -1.0, 1.0)[:, None]
            degenerate = side == 0
            if np.any(degenerate):
                n_frame[degenerate] = facing[degenerate]
        # mesh frame -> world by the inverse transpose (A^T), then world -> camera (R)
        n_cam = n_frame @ (R @ A.T).T
        n_cam /= np.maximum(np.sqrt(np.einsum("ij,ij->i", n_cam, n_cam)), 1e-12)[:, None]
        ray = rays / np.sqrt(np.einsum("ij,ij->i", rays, rays))[:, None]
        cos = np.einsum("ij,ij->i", n_cam, ray)
        bend = cos > -FACING_EPS
        if np.any(bend):
            n_cam[bend] -= (cos[bend] + FACING_EPS)[:, None] * ray[bend]
            n_cam[bend] /= np.linalg.norm(n_cam[bend], axis=1, keepdims=True)
        out["pix"].append(pix)
        out["part"].append(np.full(len(pix), index))
        out["depth"].append(t)
        out["normal"].append(n_cam)
        if want_nocs:
            if part.nocs_from_mesh is None:
                out["nocs"].append(np.zeros((len(pix), 3)))
            else:
                points = origin + t[:, None] * dirs
                nocs_T = np.asarray(part.nocs_from_mesh, dtype=np.float64).reshape(4, 4)
                out["nocs"].append(points @ nocs_T[:3, :3].T + nocs_T[:3, 3])
    empty = {
        "pix": np.zeros(0, np.int64),
        "part": np.zeros(0, np.int64),
        "depth": np.zeros(0),
        "normal": np.zeros((0, 3)),
        "nocs": np.zeros((0, 3)),
    }
    return {k: np.concatenate(v) if v else empty[k] for k, v in out.items() if k != "nocs" or want_nocs}


def composite(surfs: list[dict[str, np.ndarray]], n_pixels: int) -> dict:
    """Per pixel, keep the nearest of the parts' exact hits (ties: the earlier part).

    ``surfs[k]`` is :func:`pixel_hits` of part k drawn alone (its ``part`` entries are ignored and
    set to k). Also returns ``t`` (K, n_pixels): each part's own exact depth per pixel (inf where it
    does not cover the pixel), for amodal masks and joint visibility.
    """
    t = np.full((len(surfs), n_pixels), np.inf)
    for k, surf in enumerate(surfs):
        t[k, surf["pix"]] = surf["depth"]
    nearest = np.argmin(t, axis=0) if len(surfs) else np.zeros(n_pixels, np.int64)
    keys = ("pix", "depth", "normal") + (("nocs",) if all("nocs" in s for s in surfs) else ())
    keep = [nearest[s["pix"]] == k for k, s in enumerate(surfs)]
    out = {key: np.concatenate([s[key][m] for s, m in zip(surfs, keep, strict=True)]) for key in keys}
    out["part"] = np.concatenate([np.full(int(m.sum()), k) for k, m in enumerate(keep)]).astype(np.int64)
    out["t"] = t
    return out


def visible_maps(
    surf: dict[str, np.ndarray], seg_ids: list[int], has_nocs: list[bool], h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``seg``, ``depth_m`` (float32 metres), ``depth`` (uint16 mm) and ``nocs`` (uint8 RGB) of a
    composited surface, encoded as :mod:`hoigen.data.contract` says; 0 where nothing is seen (and
    ``nocs`` 0 where the visible part has no NOCS). ``seg_ids``/``has_nocs`` are per part."""
    pix, part = surf["pix"], surf["part"]
    seg = np.zeros(h * w, dtype=np.uint8)
    seg[pix] = np.asarray(seg_ids, dtype=np.uint8)[part]
    depth_m = np.zeros(h * w, dtype=np.float32)
    depth_m[pix] = surf["depth"]
    depth = np.zeros(h * w, dtype=np.uint16)
    depth[pix] = encode_depth(surf["depth"])
    nocs = np.zeros((h * w, 3), dtype=np.uint8)
    with_nocs = np.asarray(has_nocs, dtype=bool)[part]
    nocs[pix[with_nocs]] = encode_nocs(surf["nocs"][with_nocs])
    return seg.reshape(h, w), depth_m.reshape(h, w), depth.reshape(h, w), nocs.reshape(h, w, 3)


def normal_image(surf: dict[str, np.ndarray], h: int, w: int, dtype: type, background: np.ndarray) -> np.ndarray:
    """The encoded normal map (H,W,3): RGB = 127.5 - 127.5 * n where covered, else ``background``
    (uint8: rounded and clipped, as stored; float32: unrounded, to be area-averaged first)."""
    image = np.empty((h * w, 3), dtype=dtype)
    for k in range(3):  # per channel: much faster than broadcasting a (3,) row
        image[:, k] = background[k]
    rgb = normal_colour(surf["normal"])
    image[surf["pix"]] = np.clip(np.round(rgb), 0, 255) if dtype == np.uint8 else rgb
    return image.reshape(h, w, 3)
