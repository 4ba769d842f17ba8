"""Implicit skin for the embedded hand: signed-distance primitives, smooth unions, and a closed mesh.

The embedded hand's surface is the zero level set of a signed distance built from a rounded palm
slab, a thenar pad and tapered capsules along each finger, joined with a smooth minimum (which
also forms the webs between the fingers). :func:`mesh_from_sdf` samples it on a grid, extracts the
surface with marching cubes and decimates it to a target vertex count, returning one closed,
manifold, outward-wound triangle mesh. Everything is deterministic (no random numbers).
"""

from __future__ import annotations

import numpy as np


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two distances with blend radius ``k`` (metres)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def culled(p: np.ndarray, lo, hi, fn, far: float = 0.03) -> np.ndarray:
    """``fn(p)`` for points inside the box [lo, hi], ``far`` elsewhere (a speed-up: the box must hold
    every point closer than ``far - k`` to the primitive, ``k`` the largest blend radius used)."""
    inside = np.all((p >= np.asarray(lo)) & (p <= np.asarray(hi)), axis=1)
    out = np.full(len(p), far)
    if inside.any():
        out[inside] = fn(p[inside])
    return out


def round_cone(p: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Signed distance (N,) to a capsule from ``a`` (radius ``ra``) to ``b`` (radius ``rb``).

    The radius varies linearly along the axis; accurate for the gentle tapers of fingers.
    """
    ab = b - a
    t = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
    closest = a + t[:, None] * ab
    return np.linalg.norm(p - closest, axis=1) - (ra + (rb - ra) * t)


def ellipsoid(p: np.ndarray, centre: np.ndarray, axes: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Approximate signed distance to an ellipsoid with orthonormal ``axes`` (3, 3) rows, ``radii``."""
    q = (p - centre) @ axes.T
    k0 = np.linalg.norm(q / radii, axis=1)
    k1 = np.linalg.norm(q / radii**2, axis=1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def rounded_slab(p: np.ndarray, outline: np.ndarray, half_thickness, rounding: float) -> np.ndarray:
    """Signed distance to a convex outline (K, 2) in the x-z plane, extruded to ``|y| <= half_thickness``
    (a number or a function of x) with edges rounded by ``rounding``."""
    xz = p[:, [0, 2]]
    d2 = _convex_polygon_sdf(xz, outline) + rounding
    h = half_thickness(p[:, 0]) if callable(half_thickness) else half_thickness
    dy = np.abs(p[:, 1]) - h + rounding
    outside = np.sqrt(np.maximum(d2, 0.0) ** 2 + np.maximum(dy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(d2, dy), 0.0) - rounding


def _convex_polygon_sdf(q: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance (N,) from 2-D points to a convex polygon (K, 2), counter-clockwise or not."""
    n = len(poly)
    area = 0.5 * np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    ccw = 1.0 if area > 0 else -1.0
    dist = np.full(len(q), np.inf)
    inside = np.ones(len(q), dtype=bool)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        e = b - a
        w = q - a
        t = np.clip(w @ e / (e @ e), 0.0, 1.0)
        dist = np.minimum(dist, np.linalg.norm(w - t[:, None] * e, axis=1))
        inside &= ccw * (e[0] * w[:, 1] - e[1] * w[:, 0]) > 0
    return np.where(inside, -dist, dist)


def mesh_from_sdf(sdf, lo: np.ndarray, hi: np.ndarray, step: float, target_vertices: int, size=None,
                  relax: int = 20):
    """Closed triangle mesh (vertices (V, 3) float64, faces (F, 3) int64) of the zero level set.

    ``sdf`` maps (N, 3) points to (N,) signed distances (negative inside); the box [lo, hi] must
    contain the shape with a margin. The marching-cubes surface (grid ``step``) is decimated by
    collapsing its shortest edges (lengths divided by ``size(points)``, the wanted local edge
    length, when given) down to ``target_vertices``, relaxed tangentially ``relax`` times and
    projected back onto the level set, so triangles come out even-sized and well shaped. The result
    is checked to be one closed, manifold, outward-wound surface.
    """
    import trimesh
    from skimage.measure import marching_cubes

    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    counts = np.ceil((hi - lo) / step).astype(int) + 1
    axes = [lo[i] + step * np.arange(counts[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    values = sdf(grid).reshape(*counts)
    faces_of_box = (values[0], values[-1], values[:, 0], values[:, -1], values[:, :, 0], values[:, :, -1])
    if min(float(side.min()) for side in faces_of_box) <= 0:
        raise ValueError("mesh_from_sdf: the shape touches the sampling box; enlarge it")
    values[values == 0.0] = 1e-12  # a sample exactly on the surface makes degenerate triangles
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(step, step, step), allow_degenerate=False)
    verts = verts.astype(np.float64) + lo
    verts, faces = collapse_shortest_edges(verts, faces.astype(np.int64), target_vertices, size)
    for _ in range(relax):
        verts = _relax(verts, faces, sdf)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if mesh.volume < 0:
        mesh.invert()
    if not (mesh.is_watertight and mesh.is_winding_consistent and mesh.body_count == 1 and mesh.euler_number == 2):
        raise ValueError("mesh_from_sdf: the surface is not one closed manifold of genus 0")
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def project_to_surface(points: np.ndarray, sdf, steps: int = 3, eps: float = 1e-5) -> np.ndarray:
    """Move points onto the zero level set of ``sdf`` by Newton steps along its numerical gradient."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(steps):
        g = np.stack([(sdf(p + eps * e) - sdf(p - eps * e)) / (2 * eps) for e in np.eye(3)], axis=1)
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        p = p - sdf(p)[:, None] * g
    return p


def _relax(v: np.ndarray, f: np.ndarray, sdf) -> np.ndarray:
    """One round of tangential Laplacian smoothing (area-weighted centroids), then projection."""
    n = len(v)
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    centroid = tri.mean(axis=1)
    normal = np.zeros((n, 3))
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    acc, wsum = np.zeros((n, 3)), np.zeros(n)
    for c in range(3):
        np.add.at(acc, f[:, c], centroid * area[:, None])
        np.add.at(wsum, f[:, c], area)
        np.add.at(normal, f[:, c], face_n)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-18)
    move = acc / wsum[:, None] - v
    move -= (move * normal).sum(axis=1, keepdims=True) * normal
    return project_to_surface(v + 0.5 * move, sdf, steps=2)


def collapse_shortest_edges(v: np.ndarray, f: np.ndarray, target_vertices: int, size=None):
    """Decimate a closed manifold mesh to ``target_vertices`` by collapsing its shortest edges.

    Edges are ranked by length (divided by ``size`` at their midpoint when given); an edge collapses
    to its midpoint only if that keeps the surface manifold (the link condition) and turns no
    triangle over. Deterministic; returns compacted (vertices, faces).
    """
    import heapq
    import math

    pos = [tuple(map(float, p)) for p in v]
    faces = [list(map(int, t)) for t in f]
    face_alive = [True] * len(faces)
    vert_faces: list[set[int]] = [set() for _ in range(len(v))]
    for i, (a, b, c) in enumerate(faces):
        vert_faces[a].add(i)
        vert_faces[b].add(i)
        vert_faces[c].add(i)
    alive = len(v)
    dead = [False] * len(v)

    def neighbours(a: int) -> set[int]:
        out = set()
        for fi in vert_faces[a]:
            out.update(faces[fi])
        out.discard(a)
        return out

    def scale_at(p) -> float:
        return 1.0 if size is None else float(size(np.array([p]))[0])

    def cost(a: int, b: int) -> float:
        pa, pb = pos[a], pos[b]
        mid = ((pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2, (pa[2] + pb[2]) / 2)
        return math.dist(pa, pb) / scale_at(mid)

    edges = np.unique(np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1), axis=0)
    mids = (v[edges[:, 0]] + v[edges[:, 1]]) / 2
    scales = np.ones(len(edges)) if size is None else size(mids)
    lengths = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1) / scales
    heap = [(float(c), int(a), int(b)) for c, (a, b) in zip(lengths, edges, strict=True)]
    heapq.heapify(heap)
    while alive > target_vertices and heap:
        c, a, b = heapq.heappop(heap)
        if dead[a] or dead[b]:
            continue
        na = neighbours(a)
        if b not in na:
            continue
        now = cost(a, b)
        if abs(now - c) > 1e-12:
            heapq.heappush(heap, (now, a, b))
            continue
        shared = [fi for fi in vert_faces[a] if b in faces[fi]]
        opposite = {x for fi in shared for x in faces[fi]} - {a, b}
        if len(shared) != 2 or na & neighbours(b) != opposite:
            continue
        pa, pb = pos[a], pos[b]
        mid = ((pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2, (pa[2] + pb[2]) / 2)
        around = (vert_faces[a] | vert_faces[b]) - set(shared)
        moved = (([pos[x] for x in faces[fi]], [mid if x in (a, b) else pos[x] for x in faces[fi]]) for fi in around)
        if not all(_keeps_orientation(before, after) for before, after in moved):
            continue
        pos[a] = mid
        for fi in shared:
            face_alive[fi] = False
            for x in faces[fi]:
                vert_faces[x].discard(fi)
        for fi in vert_faces[b]:
            faces[fi] = [a if x == b else x for x in faces[fi]]
            vert_faces[a].add(fi)
        vert_faces[b] = set()
        dead[b] = True
        alive -= 1
        for x in neighbours(a):
            heapq.heappush(heap, (cost(a, x), min(a, x), max(a, x)))
    keep = np.flatnonzero(~np.array(dead))
    remap = np.full(len(v), -1)
    remap[keep] = np.arange(len(keep))
    out_faces = np.array([faces[i] for i in range(len(faces)) if face_alive[i]], dtype=np.int64)
    return np.array(pos)[keep], remap[out_faces]


def _normal(t) -> tuple[float, float, float]:
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = t
    ux, uy, uz, wx, wy, wz = bx - ax, by - ay, bz - az, cx - ax, cy - ay, cz - az
    return (uy * wz - uz * wy, uz * wx - ux * wz, ux * wy - uy * wx)


def _keeps_orientation(before, after) -> bool:
    """True if a triangle moved from ``before`` to ``after`` (3 points each) turns by under ~70 deg."""
    n0, n1 = _normal(before), _normal(after)
    d = n0[0] * n1[0] + n0[1] * n1[1] + n0[2] * n1[2]
    l0 = (n0[0] ** 2 + n0[1] ** 2 + n0[2] ** 2) ** 0.5
    l1 = (n1[0] ** 2 + n1[1] ** 2 + n1[2] ** 2) ** 0.5
    return l0 > 1e-14 and l1 > 1e-14 and d >= 0.35 * l0 * l1
