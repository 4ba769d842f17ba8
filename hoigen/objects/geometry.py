"""Surface sampling, closest points and signed distance on triangle meshes, in plain numpy.

trimesh's own proximity and ``contains`` need ``rtree`` (not a dependency here), so this module
does the work itself:

- ``closest_point``: exact point-triangle distance (Ericson, *Real-Time Collision Detection* 5.1.5,
  with per-face edge dot products precomputed) over candidate faces pruned with KD-trees on face
  centroids. The nearest vertex (and, on meshes with faces of several sizes, the faces with the
  nearest centroids) gives an upper bound ``u`` on the distance; a face can only be closer if its
  centroid lies within ``u + radius`` (one tree per group of similar radii, so a few large faces do
  not widen every search) and its longest edge within ``u + height`` (tight for slivers).
- ``winding_number``: the generalised winding number (sum of signed solid angles / 4 pi), ~1 inside a
  closed surface and ~0 outside; robust for meshes with small holes and for closed parts that
  overlap each other (the procedural mug), where it is >= 1 in the overlap.
- ``signed_distance`` / ``MeshQuery``: distance to the surface, **positive inside** (a penetration
  depth, trimesh's convention), negative outside; the sign comes from pseudonormals at the closest
  feature (fast, exact for closed meshes), see ``MeshQuery``.
"""

from __future__ import annotations

import itertools

import numpy as np
import trimesh
from scipy.spatial import cKDTree

_PAIR_CHUNK = 1_000_000  # point-face pairs evaluated at once (memory ~ 100 B per pair)
_WINDING_CHUNK = 500_000
_SEED_FACES = 4  # faces with the nearest centroids, evaluated first to tighten the search bound


def sample_surface(mesh: trimesh.Trimesh, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly on the surface (area-weighted) and their face normals, both (n, 3)."""
    tri = np.asarray(mesh.triangles, dtype=np.float64)
    area = np.asarray(mesh.area_faces, dtype=np.float64)
    face = rng.choice(len(tri), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    t = tri[face]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    return points, np.asarray(mesh.face_normals, dtype=np.float64)[face]


def _closest_on_triangles(
    p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on triangles (a, b, c) to points p, all (k, 3), row by row, and the feature.

    Feature codes: 0 face interior, 1 edge ab, 2 edge bc, 3 edge ca, 4 vertex a, 5 vertex b, 6 vertex c
    (edges 1-3 are trimesh's face-edge order: ``mesh.edges`` rows 3*f + code - 1).
    """
    ab, ac = b - a, c - a
    return _closest_on_edges(p, a, ab, ac, *_edge_dots(ab, ac))


def _edge_dots(ab: np.ndarray, ac: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row ``ab.ab``, ``ab.ac`` and ``ac.ac`` of edge vectors (k, 3)."""
    return (np.einsum("ij,ij->i", ab, ab), np.einsum("ij,ij->i", ab, ac), np.einsum("ij,ij->i", ac, ac))


def _closest_on_edges(
    p: np.ndarray, a: np.ndarray, ab: np.ndarray, ac: np.ndarray, abab: np.ndarray, abac: np.ndarray, acac: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``_closest_on_triangles`` of triangles given as corner ``a``, edges ``ab``, ``ac`` and their dots.

    Ericson's six dot products reduce to two per row: ``ab.bp = ab.ap - ab.ab`` and so on. The
    Voronoi region picks the barycentric weights (v, w) of b and c; the point is ``a + v ab + w ac``.
    """
    ap = p - a
    d1 = np.einsum("ij,ij->i", ab, ap)
    d2 = np.einsum("ij,ij->i", ac, ap)
    d3, d4 = d1 - abab, d2 - abac  # ab.bp, ac.bp
    d5, d6 = d1 - abac, d2 - acac  # ab.cp, ac.cp
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    e_bc, f_bc = d4 - d3, d5 - d6
    # the Voronoi region is the feature; later ones take precedence (vertices over edges over the face)
    feat = np.zeros(len(p), dtype=np.int8)
    np.putmask(feat, (vc <= 0) & (d1 >= 0) & (d3 <= 0), 1)
    np.putmask(feat, (vb <= 0) & (d2 >= 0) & (d6 <= 0), 3)
    np.putmask(feat, (va <= 0) & (e_bc >= 0) & (f_bc >= 0), 2)
    np.putmask(feat, (d1 <= 0) & (d2 <= 0), 4)
    np.putmask(feat, (d3 >= 0) & (d4 <= d3), 5)
    np.putmask(feat, (d6 >= 0) & (d5 <= d6), 6)
    # (v, w) of each feature, then each row's pick (``np.choose``'s values, without its broadcasting)
    n = len(p)
    choice = np.zeros((2, 7, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.divide(1.0, va + vb + vc)
        np.multiply(vb, denom, out=choice[0, 0])
        np.multiply(vc, denom, out=choice[1, 0])
        np.divide(d1, d1 - d3, out=choice[0, 1])
        np.divide(e_bc, e_bc + f_bc, out=choice[1, 2])  # t_bc
        np.subtract(1.0, choice[1, 2], out=choice[0, 2])
        np.divide(d2, d2 - d6, out=choice[1, 3])
        choice[0, 5] = 1.0
        choice[1, 6] = 1.0
        v, w = choice.reshape(2, -1).take(feat.astype(np.intp) * n + np.arange(n), axis=1)
        out = a + ab * v[:, None] + ac * w[:, None]
    if not np.isfinite(out).all():  # degenerate triangles: fall back to the nearest corner
        bad = ~np.isfinite(out).all(axis=1)
        corners = np.stack([a[bad], a[bad] + ab[bad], a[bad] + ac[bad]], axis=1)
        k = np.argmin(((corners - p[bad, None]) ** 2).sum(-1), axis=1)
        out[bad] = corners[np.arange(len(k)), k]
        feat[bad] = 4 + k
    return out, feat


class MeshQuery:
    """Closest-point and signed-distance queries on one mesh; build once, query many times.

    The sign comes from angle-weighted pseudonormals (Baerentzen & Aanaes 2005) at the closest
    feature (face, edge or vertex): exact for closed, consistently oriented meshes and linear in
    the number of candidate faces. A mesh made of several closed parts (the procedural mug) is
    queried part by part and combined as a union (``max`` of the signed distances), so points in
    the overlap of two parts are inside; a part is skipped for points outside its bounding box by
    more than the distance to the nearest vertex of any part (it cannot give the maximum there).
    Open meshes use the whole surface at once; for them ``winding_number`` is the more robust (and
    slower) inside test.
    """

    def __init__(self, mesh: trimesh.Trimesh) -> None:
        self.vertices = np.asarray(mesh.vertices, dtype=np.float64)
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        self.triangles = self.vertices[self.faces]
        self.centroid = self.triangles.mean(axis=1)
        self.radius = np.sqrt(((self.triangles - self.centroid[:, None]) ** 2).sum(-1).max(axis=1))
        self._a = np.ascontiguousarray(self.triangles[:, 0])
        self._ab = self.triangles[:, 1] - self._a
        self._ac = self.triangles[:, 2] - self._a
        self._dots = _edge_dots(self._ab, self._ac)  # ab.ab, ab.ac, ac.ac per face
        edges = np.stack([self._ab, self.triangles[:, 2] - self.triangles[:, 1], -self._ac], axis=1)  # ab, bc, ca
        length2 = (edges**2).sum(-1)
        longest = np.argmax(length2, axis=1)
        rows = np.arange(len(self.faces))
        self._long_start = self.triangles[rows, longest]
        self._long_edge = edges[rows, longest]
        with np.errstate(divide="ignore", invalid="ignore"):
            self._long_inv = np.nan_to_num(1.0 / length2[rows, longest], posinf=0.0)
            area2 = np.linalg.norm(np.cross(self._ab, self._ac), axis=1)
            self._height = np.nan_to_num(area2 / np.sqrt(length2[rows, longest]), nan=0.0) + 1e-12
        fn = np.asarray(mesh.face_normals, dtype=np.float64)
        angles = np.nan_to_num(np.asarray(mesh.face_angles, dtype=np.float64))
        # sums in index order (bincount adds its weights one by one, as np.add.at would, only faster)
        corner = self.faces.T.reshape(-1)  # every face's corner 0, then corner 1, then corner 2
        weighted = (fn[None] * angles.T[:, :, None]).reshape(-1, 3)  # fn * angle, corner by corner
        self.vertex_pseudonormal = _scatter_add(corner, weighted, len(self.vertices))
        edges = np.sort(self.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
        # edge ids in lexicographic order of (low, high) vertex, from one int64 key per edge
        _, edge_id = np.unique(edges[:, 0] * max(len(self.vertices), 1) + edges[:, 1], return_inverse=True)
        edge_id = edge_id.reshape(-1)
        en = _scatter_add(edge_id, np.repeat(fn, 3, axis=0), edge_id.max() + 1 if len(edge_id) else 0)
        self.edge_pseudonormal = en[edge_id].reshape(-1, 3, 3)  # (face, edge k, xyz)
        self.face_normal = fn
        self.parts: list[np.ndarray] = []
        labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(self.faces))
        if labels.max(initial=0) > 0 and mesh.is_watertight:
            self.parts = [np.flatnonzero(labels == i) for i in range(labels.max() + 1)]
        self._search = _FaceSearch(self, np.arange(len(self.faces)))
        self._part_search = [_FaceSearch(self, p) for p in self.parts]

    def closest_point(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest surface points (n, 3), their distances (n,) and face indices (n,)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        q, d, f, _ = self._closest(pts, [self._search], [np.arange(len(pts))])
        return q, d, f

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (n,): **positive inside** (penetration depth), negative outside."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        everyone = np.arange(len(pts))
        if not self._part_search:
            subsets, uppers = [everyone], None
        else:
            # part j cannot give the maximum where p lies outside its bounding box by more than
            # the distance U to the nearest vertex of any part: there sd_j < -U <= max_k sd_k
            uppers = [s.vertex_tree.query(pts)[0] for s in self._part_search]
            nearest = np.min(uppers, axis=0)
            subsets = []
            for s in self._part_search:
                gap = np.linalg.norm(np.maximum(s.lo - pts, 0.0) + np.maximum(pts - s.hi, 0.0), axis=1)
                subsets.append(np.flatnonzero(gap <= nearest + 1e-12))
            uppers = [u[sub] for u, sub in zip(uppers, subsets, strict=True)]
        # all parts in one pass: the rows are the points of each subset in turn
        owner = np.concatenate(subsets)
        q, d, f, feat = self._closest(pts, self._part_search or [self._search], subsets, uppers)
        normal = self.face_normal.take(f, axis=0)
        on_edge = np.flatnonzero((feat >= 1) & (feat <= 3))
        edge = f[on_edge] * 3 + feat[on_edge] - 1  # row of (face, edge) in the (F * 3, 3) edge normals
        normal[on_edge] = self.edge_pseudonormal.reshape(-1, 3).take(edge, axis=0)
        on_vertex = np.flatnonzero(feat >= 4)
        normal[on_vertex] = self.vertex_pseudonormal.take(self.faces[f[on_vertex], feat[on_vertex] - 4], axis=0)
        outside = np.einsum("ij,ij->i", pts.take(owner, axis=0) - q, normal) > 0
        out = np.full(len(pts), -np.inf)
        np.maximum.at(out, owner, np.where(outside, -d, d))  # the union of the parts
        return out

    def _closest(
        self,
        pts: np.ndarray,
        searches: list[_FaceSearch],
        subsets: list[np.ndarray],
        uppers: list[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Closest points, distances, faces and features (see ``_closest_on_triangles``) of the
        points ``pts[subsets[j]]`` on the faces of ``searches[j]``, all j in turn (one row each).

        ``uppers[j]``, if given, are the distances of those points to the nearest vertex of ``searches[j]``.
        """
        owner = np.concatenate(subsets)
        m = len(owner)
        tiled = pts.take(owner, axis=0)  # take: the same rows as fancy indexing, several times faster
        best = (np.zeros((m, 3)), np.full(m, np.inf), np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int8))
        if m == 0 or len(self.faces) == 0:
            return best
        ends = np.cumsum([len(sub) for sub in subsets])
        blocks = [
            (s, pts.take(sub, axis=0), np.arange(end - len(sub), end))
            for s, sub, end in zip(searches, subsets, ends, strict=True)
        ]
        # upper bound: the nearest vertex, or (large faces) the nearest of the faces with the nearest centroids
        if uppers is None:
            uppers = [s.vertex_tree.query(p)[0] for s, p, _ in blocks]
        upper = np.concatenate(uppers)
        seeds = [(s, p, rows) for s, p, rows in blocks if s.seed and len(rows)]
        if seeds:
            pi, fi = [], []
            for s, p, rows in seeds:
                k = min(_SEED_FACES, len(s.faces))
                pi.append(np.repeat(rows, k))
                fi.append(s.faces[s.centroid_tree.query(p, k=k)[1].reshape(-1)])
            self._take(tiled, np.concatenate(pi), np.concatenate(fi), best)
            upper = np.minimum(upper, best[1])
        upper = upper + 1e-12
        # candidates: faces whose bounding sphere reaches within the bound, searched per radius group
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
        p = tiled.take(pi, axis=0)
        # the bounds compare squares (no square roots): they differ from ``|x| - r <= upper`` only
        # in the last bit, and a pair that close to the bound is farther than ``upper - 1e-12``,
        # never the nearest, so the nearest pairs reaching ``_take`` (and their order) are the same
        gap = p - self.centroid.take(fi, axis=0)
        reach = upper[pi] + self.radius[fi]
        keep = np.flatnonzero(np.einsum("ij,ij->i", gap, gap) <= reach * reach)
        pi, fi, p = pi[keep], fi[keep], p.take(keep, axis=0)
        # a face lies within its height of its longest edge: a tighter bound for slivers
        start, edge = self._long_start.take(fi, axis=0), self._long_edge.take(fi, axis=0)
        gap = p - start
        t = np.clip(np.einsum("ij,ij->i", gap, edge) * self._long_inv[fi], 0.0, 1.0)
        gap -= edge * t[:, None]
        reach = upper[pi] + self._height[fi]
        keep = np.einsum("ij,ij->i", gap, gap) <= reach * reach
        self._take(tiled, pi[keep], fi[keep], best)
        return best

    def _take(self, pts: np.ndarray, pi: np.ndarray, fi: np.ndarray, best: tuple[np.ndarray, ...]) -> None:
        """Evaluate point-face pairs ``(pi, fi)``; per point, keep a nearest face if nearer than ``best``."""
        best_q, best_d, best_f, best_feat = best
        for s in range(0, len(pi), _PAIR_CHUNK):
            p_i, f_i = pi[s : s + _PAIR_CHUNK], fi[s : s + _PAIR_CHUNK]
            p = pts.take(p_i, axis=0)
            a, ab, ac = (x.take(f_i, axis=0) for x in (self._a, self._ab, self._ac))
            q, feat = _closest_on_edges(p, a, ab, ac, *(x[f_i] for x in self._dots))
            d = np.linalg.norm(q - p, axis=1)
            low = np.full(len(pts), np.inf)
            np.minimum.at(low, p_i, d)
            sel = np.flatnonzero((d == low[p_i]) & (d < best_d[p_i]))
            # a point with tied candidates: the last of them wins (all are equally near)
            best_d[p_i[sel]] = d[sel]
            best_q[p_i[sel]] = q.take(sel, axis=0)
            best_f[p_i[sel]] = f_i[sel]
            best_feat[p_i[sel]] = feat[sel]


def _scatter_add(index: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """``out[index[i]] += rows[i]`` for i in order (``np.add.at``'s sums, bit for bit), out (size, 3)."""
    return np.stack([np.bincount(index, weights=rows[:, j], minlength=size) for j in range(3)], axis=1)


class _FaceSearch:
    """KD-trees over a set of faces of a ``MeshQuery``: their vertices, their centroids, and their
    centroids again in groups of similar bounding radius (so one huge face does not widen every
    candidate search)."""

    def __init__(self, query: MeshQuery, faces: np.ndarray) -> None:
        self.faces = np.asarray(faces, dtype=np.int64)
        self.vertex_tree = cKDTree(query.vertices[np.unique(query.faces[self.faces])].reshape(-1, 3))
        self.centroid_tree = cKDTree(query.centroid[self.faces].reshape(-1, 3))
        corners = query.vertices[query.faces[self.faces]].reshape(-1, 3)
        self.lo = corners.min(axis=0) if len(corners) else np.zeros(3)
        self.hi = corners.max(axis=0) if len(corners) else np.zeros(3)
        radius = query.radius[self.faces]
        self.groups: list[tuple[cKDTree, np.ndarray, float]] = []
        self.seed = False
        if len(self.faces) == 0:
            return
        # group g > 0 holds radii in [2^g, 2^(g+1)) x the median; group 0 all below twice the median
        ref = max(float(np.median(radius)), 1e-12)
        group = np.floor(np.log2(np.maximum(radius, ref) / ref)).astype(np.int64)
        for g in np.unique(group):
            members = self.faces[group == g]
            self.groups.append((cKDTree(query.centroid[members]), members, float(query.radius[members].max())))
        # faces of several sizes: the nearest vertex can be far from the nearest (large) face, so
        # evaluate the faces with the nearest centroids first to tighten the bound
        self.seed = len(self.groups) > 1


def closest_point(mesh: trimesh.Trimesh, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface points (n, 3), their distances (n,) and face indices (n,)."""
    return MeshQuery(mesh).closest_point(points)


def winding_number(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Generalised winding number of each point (n,): ~1 inside a closed surface, ~0 outside.

    Exact but O(points x faces) (~0.4 us per pair): use it for open meshes or checks, not in loops.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tri = np.asarray(mesh.triangles, dtype=np.float64)
    out = np.zeros(len(pts))
    step = max(1, _WINDING_CHUNK // max(1, len(tri)))
    for s in range(0, len(pts), step):
        r = tri[None, :, :, :] - pts[s : s + step, None, None, :]  # (p, f, 3, 3)
        a, b, c = r[:, :, 0], r[:, :, 1], r[:, :, 2]
        la, lb, lc = (np.sqrt((x * x).sum(-1)) for x in (a, b, c))
        det = (a * np.cross(b, c)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out[s : s + step] = np.arctan2(det, den).sum(axis=1) / (2.0 * np.pi)
    return out


def contains(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Boolean (n,): the point lies inside the mesh (winding number > 0.5)."""
    return winding_number(mesh, points) > 0.5


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Signed distance (n,) from each point to the surface: **positive inside**, negative outside.

    Builds a ``MeshQuery`` each call; keep one yourself when querying the same mesh repeatedly.
    """
    return MeshQuery(mesh).signed_distance(points)
