"""Procedural objects of the NOCS categories: the embedded default when no meshes are given.

Each category is a profile revolved about the +y axis (bottle, bowl, can, mug body) or a box, with
sizes drawn from a ``numpy.random.Generator`` around real-world dimensions. Every mesh is closed
(watertight, outward normals), in metres, y-up, with its origin at the bounding-box centre.

The mug is two closed parts in one mesh: the revolved body and a swept elliptic tube for the
handle on the +x side whose capped ends are buried in the body wall. Every edge has exactly two
faces (``is_watertight`` holds) but the parts intersect each other, so ``volume`` counts the small
overlap twice; winding-number inside tests (``hoigen.objects.geometry``) are correct for it.
"""

from __future__ import annotations

import zlib

import numpy as np
import trimesh

from hoigen.errors import HoigenError
from hoigen.objects.asset import ObjectAsset

PROCEDURAL_CATEGORIES: tuple[str, ...] = ("bottle", "bowl", "can", "mug", "box")
SEGMENTS = 48  # facets around the revolution axis


def revolve(profile: np.ndarray, segments: int = SEGMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Revolve a (r, y) profile about +y into a closed mesh.

    The profile must start and end on the axis (r == 0) and have r > 0 in between; those two
    ends become single pole vertices, so the surface is closed without degenerate faces.
    """
    p = np.asarray(profile, dtype=np.float64)
    if p[0, 0] != 0 or p[-1, 0] != 0 or np.any(p[1:-1, 0] <= 0):
        raise ValueError("profile must start and end on the axis and stay off it in between")
    rings = p[1:-1]
    m, s = len(rings), segments
    theta = np.arange(s) * (2.0 * np.pi / s)
    ring_v = np.stack(
        [
            rings[:, :1] * np.cos(theta)[None, :],
            np.repeat(rings[:, 1:2], s, axis=1),
            rings[:, :1] * np.sin(theta)[None, :],
        ],
        axis=-1,
    ).reshape(-1, 3)
    verts = np.vstack([[0.0, p[0, 1], 0.0], ring_v, [0.0, p[-1, 1], 0.0]])
    top = len(verts) - 1
    j = np.arange(s)
    jn = (j + 1) % s
    faces = [np.stack([np.zeros(s, int), 1 + jn, 1 + j], axis=1)]
    for i in range(m - 1):
        a, b = 1 + i * s, 1 + (i + 1) * s
        faces.append(np.stack([a + j, a + jn, b + j], axis=1))
        faces.append(np.stack([a + jn, b + jn, b + j], axis=1))
    last = 1 + (m - 1) * s
    faces.append(np.stack([np.full(s, top), last + j, last + jn], axis=1))
    return verts, _outward(verts, np.vstack(faces))


def sweep_tube(path: np.ndarray, r_in_plane: float, r_z: float, sides: int = 14):
    """A closed elliptic tube along a polyline in the z = 0 plane, capped at both ends."""
    path = np.asarray(path, dtype=np.float64)
    tangent = np.gradient(path, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    z = np.array([0.0, 0.0, 1.0])
    normal = np.cross(z, tangent)
    phi = np.arange(sides) * (2.0 * np.pi / sides)
    rings = (
        path[:, None, :]
        + r_in_plane * np.cos(phi)[None, :, None] * normal[:, None, :]
        + r_z * np.sin(phi)[None, :, None] * z[None, None, :]
    ).reshape(-1, 3)
    n = len(path)
    verts = np.vstack([rings, path[0], path[-1]])
    c0, c1 = len(verts) - 2, len(verts) - 1
    j = np.arange(sides)
    jn = (j + 1) % sides
    faces = []
    for i in range(n - 1):
        a, b = i * sides, (i + 1) * sides
        faces.append(np.stack([a + j, b + j, a + jn], axis=1))
        faces.append(np.stack([a + jn, b + j, b + jn], axis=1))
    faces.append(np.stack([np.full(sides, c0), j, jn], axis=1))
    last = (n - 1) * sides
    faces.append(np.stack([np.full(sides, c1), last + jn, last + j], axis=1))
    return verts, _outward(verts, np.vstack(faces))


def _outward(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip a closed surface's faces if its signed volume is negative."""
    tri = verts[faces]
    vol = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
    return faces if vol > 0 else faces[:, ::-1].copy()


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int) -> np.ndarray:
    """Points (r, y) on an elliptic arc from angle a0 to a1 (angles measured from +r)."""
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _line(p0, p1, max_len: float = 0.02) -> np.ndarray:
    """Points from p0 (excluded) to p1 (included), at most ``max_len`` apart."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    n = max(1, int(np.ceil(np.linalg.norm(p1 - p0) / max_len)))
    return p0 + (p1 - p0) * (np.arange(1, n + 1) / n)[:, None]


def _path(*pieces) -> np.ndarray:
    """Concatenate points/arrays, dropping consecutive duplicates."""
    pts = np.vstack([np.atleast_2d(np.asarray(x, float)) for x in pieces])
    keep = np.ones(len(pts), bool)
    keep[1:] = np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-9
    return pts[keep]


def bottle(rng: np.random.Generator):
    """A solid bottle ~20-25 cm tall, 6-7 cm across, with shoulder, neck and cap."""
    h = rng.uniform(0.20, 0.25)
    r = rng.uniform(0.030, 0.035)
    rn = r * rng.uniform(0.36, 0.45)
    rc = rn * rng.uniform(1.08, 1.15)
    cap = rng.uniform(0.018, 0.025)
    hb = h * rng.uniform(0.52, 0.62)
    hs = hb + h * rng.uniform(0.15, 0.2)
    e = 0.004
    t = np.linspace(0.0, 1.0, 12)[1:]
    shoulder = np.stack([rn + (r - rn) * (1 + np.cos(np.pi * t)) / 2, hb + (hs - hb) * t], axis=1)
    profile = _path(
        [0, 0],
        _line([0, 0], [r - e, 0]),
        _arc(r - e, e, e, e, -np.pi / 2, 0, 5),
        _line([r, e], [r, hb]),
        shoulder,
        _line([rn, hs], [rn, h - cap]),
        [rc, h - cap],
        _line([rc, h - cap], [rc, h - 0.002]),
        [rc - 0.002, h],
        [0, h],
    )
    return revolve(profile)


def can(rng: np.random.Generator):
    """A drink/food can ~12 cm tall, 6.6 cm across, with chamfered bottom and a recessed lid."""
    h = rng.uniform(0.11, 0.125)
    r = rng.uniform(0.031, 0.035)
    profile = _path(
        [0, 0.003],
        [r - 0.008, 0.003],
        [r - 0.006, 0],
        [r - 0.003, 0],
        [r, 0.006],
        _line([r, 0.006], [r, h - 0.008]),
        [r - 0.002, h - 0.002],
        [r - 0.002, h],
        [r - 0.004, h],
        [r - 0.005, h - 0.004],
        [0, h - 0.004],
    )
    return revolve(profile)


def bowl(rng: np.random.Generator):
    """A hollow bowl ~15 cm wide, 6 cm tall, with a 4-6 mm wall and a foot ring."""
    r = rng.uniform(0.065, 0.085)
    h = rng.uniform(0.05, 0.07)
    t = rng.uniform(0.004, 0.006)
    foot_h = 0.006
    rf, rb = 0.35 * r, 0.4 * r
    outer = _arc(rb, h, r - rb, h - foot_h, -np.pi / 2, 0, 12)
    inner = _arc(rb, h, r - t - rb, h - foot_h - t, 0, -np.pi / 2, 12)
    profile = _path(
        [0, 0.003],
        [rf - 0.004, 0.003],
        [rf - 0.002, 0],
        [rf, 0],
        outer,
        [r - t, h],
        inner,
        _line(inner[-1], [0.0, inner[-1, 1]], 0.02)[:-1],
        [0, inner[-1, 1]],
    )
    return revolve(profile)


def mug(rng: np.random.Generator):
    """A mug ~10 cm tall, 8 cm across, 4 mm wall, with a handle on the +x side (two closed parts)."""
    h = rng.uniform(0.09, 0.11)
    r = rng.uniform(0.037, 0.043)
    t = 0.004
    base = rng.uniform(0.006, 0.009)
    body = revolve(
        _path(
            [0, 0],
            [r - 0.003, 0],
            _arc(r - 0.003, 0.003, 0.003, 0.003, -np.pi / 2, 0, 4),
            _line([r, 0.003], [r, h]),
            [r - t, h],
            _line([r - t, h], [r - t, base + 0.003]),
            [r - t - 0.003, base],
            [0, base],
        )
    )
    y_top, y_bot = h * rng.uniform(0.75, 0.82), h * rng.uniform(0.22, 0.3)
    reach = rng.uniform(0.025, 0.033)
    b = (y_top - y_bot) / 2
    root = r - t / 2  # the handle's capped ends sit mid-wall, inside the body material
    arc = _arc(r, y_bot + b, reach, b, np.pi / 2, -np.pi / 2, 21)
    path = _path([root, y_top], [r - t / 4, y_top], arc, [r - t / 4, y_bot], [root, y_bot])
    path = np.hstack([path, np.zeros((len(path), 1))])
    handle = sweep_tube(path, 0.005, 0.007)
    verts = np.vstack([body[0], handle[0]])
    faces = np.vstack([body[1], handle[1] + len(body[0])])
    return verts, faces


def box(rng: np.random.Generator):
    """A closed box (a packaged-food box), subdivided so its faces are not huge."""
    ext = [rng.uniform(0.06, 0.16), rng.uniform(0.08, 0.22), rng.uniform(0.04, 0.08)]
    m = trimesh.creation.box(extents=ext)
    v, f = m.vertices, m.faces
    for _ in range(2):
        v, f = trimesh.remesh.subdivide(v, f)
    return v, _outward(v, f)


_BUILDERS = {"bottle": bottle, "bowl": bowl, "can": can, "mug": mug, "box": box}


def procedural_mesh(category: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of one object of ``category``, centred on its bounding box."""
    if category not in _BUILDERS:
        raise HoigenError(
            f"unknown procedural category {category!r}; choose from {', '.join(PROCEDURAL_CATEGORIES)}"
        )
    v, f = _BUILDERS[category](rng)
    v = v - (v.min(axis=0) + v.max(axis=0)) / 2.0
    return v, f


def procedural_objects(
    categories: list[str] | tuple[str, ...] | None = None, n_per_category: int = 1, seed: int = 0
) -> list[ObjectAsset]:
    """``n_per_category`` objects per category, ids ``<category>-<index:03d>``.

    Object i of a category depends only on (seed, category, i), not on the other categories asked for.
    """
    cats = list(PROCEDURAL_CATEGORIES[:4] if categories is None else categories)
    if n_per_category < 1:
        raise HoigenError(f"n_per_category must be >= 1 (got {n_per_category})")
    out = []
    for cat in cats:
        for i in range(n_per_category):
            rng = np.random.default_rng([int(seed), zlib.crc32(cat.encode()), i])
            v, f = procedural_mesh(cat, rng)
            out.append(ObjectAsset.create(f"{cat}-{i:03d}", cat, v, f, f"procedural:{cat}:{seed}:{i}"))
    return out
