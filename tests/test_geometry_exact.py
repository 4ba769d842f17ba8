"""``MeshQuery``'s faster signed distance computes what the code before it computed, bit for bit:
a verbatim copy of the old closest-point search (fancy-indexed gathers, square-rooted bounds,
``np.choose``) is the reference, on the grasp bench's objects at points like a grasp's hand
vertices (near the surface, inside and outside) and farther away."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hoigen.objects import PROCEDURAL_CATEGORIES, procedural_objects
from hoigen.objects.geometry import MeshQuery, _closest_on_triangles


def _reference_closest_on_triangles(p, a, b, c):
    """``_closest_on_triangles`` before session 8."""
    ab, ac = b - a, c - a
    abab, abac, acac = (np.einsum("ij,ij->i", x, y) for x, y in ((ab, ab), (ab, ac), (ac, ac)))
    return _reference_closest_on_edges(p, a, ab, ac, abab, abac, acac)


def _reference_closest_on_edges(p, a, ab, ac, abab, abac, acac):
    ap = p - a
    d1 = np.einsum("ij,ij->i", ab, ap)
    d2 = np.einsum("ij,ij->i", ac, ap)
    d3, d4 = d1 - abab, d2 - abac
    d5, d6 = d1 - abac, d2 - acac
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    e_bc, f_bc = d4 - d3, d5 - d6
    feat = np.zeros(len(p), dtype=np.int8)
    feat[(vc <= 0) & (d1 >= 0) & (d3 <= 0)] = 1
    feat[(vb <= 0) & (d2 >= 0) & (d6 <= 0)] = 3
    feat[(va <= 0) & (e_bc >= 0) & (f_bc >= 0)] = 2
    feat[(d1 <= 0) & (d2 <= 0)] = 4
    feat[(d3 >= 0) & (d4 <= d3)] = 5
    feat[(d6 >= 0) & (d5 <= d6)] = 6
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 / (va + vb + vc)
        t_bc = e_bc / (e_bc + f_bc)
        v = np.choose(feat, (vb * denom, d1 / (d1 - d3), 1.0 - t_bc, 0.0, 0.0, 1.0, 0.0))
        w = np.choose(feat, (vc * denom, 0.0, t_bc, d2 / (d2 - d6), 0.0, 0.0, 1.0))
        out = a + ab * v[:, None] + ac * w[:, None]
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        corners = np.stack([a[bad], a[bad] + ab[bad], a[bad] + ac[bad]], axis=1)
        k = np.argmin(((corners - p[bad, None]) ** 2).sum(-1), axis=1)
        out[bad] = corners[np.arange(len(k)), k]
        feat[bad] = 4 + k
    return out, feat


def _reference_take(q: MeshQuery, pts, pi, fi, best) -> None:
    best_q, best_d, best_f, best_feat = best
    p = pts[pi]
    dots = np.stack(q._dots, axis=1)[fi]
    qq, feat = _reference_closest_on_edges(p, q._a[fi], q._ab[fi], q._ac[fi], *dots.T)
    d = np.linalg.norm(qq - p, axis=1)
    low = np.full(len(pts), np.inf)
    np.minimum.at(low, pi, d)
    sel = np.flatnonzero((d == low[pi]) & (d < best_d[pi]))
    best_d[pi[sel]] = d[sel]
    best_q[pi[sel]] = qq[sel]
    best_f[pi[sel]] = fi[sel]
    best_feat[pi[sel]] = feat[sel]


def _reference_closest(q: MeshQuery, pts, searches, subsets, uppers=None):
    owner = np.concatenate(subsets)
    m = len(owner)
    tiled = pts[owner]
    best = (np.zeros((m, 3)), np.full(m, np.inf), np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int8))
    if m == 0:
        return best
    ends = np.cumsum([len(sub) for sub in subsets])
    blocks = [(s, pts[sub], np.arange(e - len(sub), e)) for s, sub, e in zip(searches, subsets, ends, strict=True)]
    if uppers is None:
        uppers = [s.vertex_tree.query(p)[0] for s, p, _ in blocks]
    upper = np.concatenate(uppers)
    seeds = [(s, p, rows) for s, p, rows in blocks if s.seed and len(rows)]
    if seeds:
        pi, fi = [], []
        for s, p, rows in seeds:
            k = min(4, len(s.faces))
            pi.append(np.repeat(rows, k))
            fi.append(s.faces[s.centroid_tree.query(p, k=k)[1].reshape(-1)])
        _reference_take(q, tiled, np.concatenate(pi), np.concatenate(fi), best)
        upper = np.minimum(upper, best[1])
    upper = upper + 1e-12
    pis, fis = [], []
    for s, p, rows in blocks:
        if len(rows) == 0:
            continue
        for tree, faces, r_max in s.groups:
            cand = tree.query_ball_point(p, upper[rows] + r_max, return_sorted=False)
            lens = np.fromiter(map(len, cand), dtype=np.int64, count=len(rows))
            fi = np.fromiter(itertools.chain.from_iterable(cand), dtype=np.int64, count=int(lens.sum()))
            pis.append(np.repeat(rows, lens))
            fis.append(faces[fi])
    pi, fi = np.concatenate(pis), np.concatenate(fis)
    p = tiled[pi]
    keep = np.linalg.norm(p - q.centroid[fi], axis=1) - q.radius[fi] <= upper[pi]
    pi, fi, p = pi[keep], fi[keep], p[keep]
    start, edge = q._long_start[fi], q._long_edge[fi]
    t = np.clip(np.einsum("ij,ij->i", p - start, edge) * q._long_inv[fi], 0.0, 1.0)
    keep = np.linalg.norm(p - start - edge * t[:, None], axis=1) - q._height[fi] <= upper[pi]
    _reference_take(q, tiled, pi[keep], fi[keep], best)
    return best


def _reference_signed_distance(q: MeshQuery, pts: np.ndarray) -> np.ndarray:
    everyone = np.arange(len(pts))
    if not q._part_search:
        subsets, uppers = [everyone], None
    else:
        uppers = [s.vertex_tree.query(pts)[0] for s in q._part_search]
        nearest = np.min(uppers, axis=0)
        subsets = []
        for s in q._part_search:
            gap = np.linalg.norm(np.maximum(s.lo - pts, 0.0) + np.maximum(pts - s.hi, 0.0), axis=1)
            subsets.append(np.flatnonzero(gap <= nearest + 1e-12))
        uppers = [u[sub] for u, sub in zip(uppers, subsets, strict=True)]
    owner = np.concatenate(subsets)
    cq, d, f, feat = _reference_closest(q, pts, q._part_search or [q._search], subsets, uppers)
    normal = q.face_normal[f]
    on_edge = (feat >= 1) & (feat <= 3)
    normal[on_edge] = q.edge_pseudonormal[f[on_edge], feat[on_edge] - 1]
    on_vertex = feat >= 4
    normal[on_vertex] = q.vertex_pseudonormal[q.faces[f[on_vertex], feat[on_vertex] - 4]]
    outside = np.einsum("ij,ij->i", pts[owner] - cq, normal) > 0
    out = np.full(len(pts), -np.inf)
    np.maximum.at(out, owner, np.where(outside, -d, d))
    return out


def _bench_meshes() -> dict[str, object]:
    from benchmarks.grasp import extra_objects

    assets = procedural_objects(list(PROCEDURAL_CATEGORIES)) + extra_objects()
    return {a.category or a.id: a.mesh for a in assets}


def test_signed_distance_equals_the_reference_bit_for_bit() -> None:
    meshes = _bench_meshes()
    assert len(meshes) == 13
    rng = np.random.default_rng(0)
    for name, mesh in meshes.items():
        q = MeshQuery(mesh)
        surface = np.asarray(mesh.sample(3000))
        near = surface + rng.normal(scale=0.004, size=surface.shape)  # like a grasp's near hand vertices
        far = rng.uniform(mesh.bounds[0] - 0.03, mesh.bounds[1] + 0.03, size=(1000, 3))
        corners = mesh.vertices[rng.integers(0, len(mesh.vertices), 200)]  # exactly on vertices
        for pts in (near, far, corners, near[:1], near[:0]):
            got = q.signed_distance(pts)
            ref = _reference_signed_distance(q, np.asarray(pts, dtype=np.float64).reshape(-1, 3))
            assert np.array_equal(got.view(np.int64), ref.view(np.int64)), name
        if name == "mug":
            assert q._part_search  # the union of parts is exercised
        cp, cd, cf = q.closest_point(near)
        rq, rd, rf, _ = _reference_closest(q, near, [q._search], [np.arange(len(near))])
        assert np.array_equal(cp, rq) and np.array_equal(cd, rd) and np.array_equal(cf, rf), name


@pytest.mark.parametrize("n", [1, 7, 1000, 20000])
def test_closest_on_triangles_equals_the_reference_bit_for_bit(n: int) -> None:
    rng = np.random.default_rng(n)
    tri = rng.normal(size=(n, 3, 3))
    p = rng.normal(size=(n, 3)) * 2
    tri[::7, 2] = tri[::7, 1]  # degenerate: two equal corners
    tri[::11, 1] = tri[::11, 0]
    tri[::11, 2] = tri[::11, 0]  # a point
    tri[::13, 2] = 2 * tri[::13, 1] - tri[::13, 0]  # collinear
    p[::5] = tri[::5, 0]  # on a corner
    p[::9] = 0.5 * (tri[::9, 0] + tri[::9, 1])  # on an edge
    q, f = _closest_on_triangles(p, tri[:, 0], tri[:, 1], tri[:, 2])
    rq, rf = _reference_closest_on_triangles(p, tri[:, 0], tri[:, 1], tri[:, 2])
    assert np.array_equal(q.view(np.int64), rq.view(np.int64)) and np.array_equal(f, rf)
    assert len(np.unique(f)) == 7 or n < 1000  # every feature occurs
