"""Procedural objects of the six NOCS categories (and a box): the embedded default when no meshes are given.

Bottle, bowl and can are profiles revolved about the +y axis; the mug is a revolved body with a
swept handle on +x; the camera is a body with grip, viewfinder hump, shutter button and a revolved
lens looking along +z; the laptop is a base in the xz plane with its lid hinged at the back (-z)
and opened by a random angle, screen facing +z. Shape parameters are drawn from a
``numpy.random.Generator`` within real-world size ranges (cited at each builder); colours are drawn
after the shape, per part, and stored per vertex. Every mesh is closed (watertight, outward
normals), in metres, y-up, with its origin at the bounding-box centre: its mesh frame is already
the NOCS frame up to the scale ``nocs_from_mesh`` applies.

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

NOCS_CATEGORIES: tuple[str, ...] = ("bottle", "bowl", "camera", "can", "laptop", "mug")
PROCEDURAL_CATEGORIES: tuple[str, ...] = (*NOCS_CATEGORIES, "box")
DEFAULT_CATEGORIES: tuple[str, ...] = ("bottle", "bowl", "can", "mug")  # what a run uses when none are named
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


def _palette(rng: np.random.Generator, saturation=(0.3, 0.8), value=(0.35, 0.95)) -> np.ndarray:
    """One random RGB colour (uint8) from hue/saturation/value ranges."""
    h, sat, val = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    rgb = val - val * sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def _paint(n: int, color: np.ndarray) -> np.ndarray:
    return np.tile(np.asarray(color, dtype=np.uint8), (n, 1))


def _join(*parts):
    """Concatenate (vertices, faces, colours) parts into one mesh of several closed parts."""
    verts, faces, colors, offset = [], [], [], 0
    for v, f, c in parts:
        verts.append(v)
        faces.append(f + offset)
        colors.append(c)
        offset += len(v)
    return np.vstack(verts), np.vstack(faces), np.vstack(colors)


def _box(lo, hi, subdivisions: int = 2):
    """A closed axis-aligned box from corner ``lo`` to ``hi``, subdivided so its faces are not huge."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    m = trimesh.creation.box(extents=hi - lo)
    v, f = m.vertices + (lo + hi) / 2, m.faces
    for _ in range(subdivisions):
        v, f = trimesh.remesh.subdivide(v, f)
    return v, _outward(v, f)


def bottle(rng: np.random.Generator):
    """A solid bottle 20-25 cm tall, 6-7 cm across, with shoulder, neck and cap.

    Sizes: 0.5 l PET water/soda bottles are ~20-23 cm tall and 6.5 cm across; 0.75 l ~25 cm.
    """
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
    v, f = revolve(profile)
    glass, label, cap_c = _palette(rng, (0.2, 0.6), (0.5, 0.9)), _palette(rng), _palette(rng)
    c = _paint(len(v), glass)
    lo, hi = sorted(rng.uniform(0.15, 0.5, size=2) * h)
    c[(v[:, 1] >= lo) & (v[:, 1] <= max(hi, lo + 0.04))] = label
    c[v[:, 1] >= h - cap - 1e-9] = cap_c
    return v, f, c


def can(rng: np.random.Generator):
    """A drink/food can 11-12.5 cm tall, 6.2-7 cm across, chamfered bottom and recessed lid.

    Sizes: 330/355 ml beverage cans are 11.5-12.2 cm tall with a 6.6 cm body (ISO 90-2 style).
    """
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
    v, f = revolve(profile)
    c = _paint(len(v), (190, 192, 198))  # aluminium ends
    c[(v[:, 1] > 0.008) & (v[:, 1] < h - 0.010)] = _palette(rng)
    return v, f, c


def bowl(rng: np.random.Generator):
    """A hollow bowl 13-17 cm wide, 5-7 cm tall, with a 4-6 mm wall and a foot ring.

    Sizes: cereal/soup bowls are typically 13-18 cm in diameter and 5-8 cm deep.
    """
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
    v, f = revolve(profile)
    return v, f, _paint(len(v), _palette(rng, (0.1, 0.7), (0.5, 0.95)))


def mug(rng: np.random.Generator):
    """A mug 9-11 cm tall, 7.4-8.6 cm across, 4 mm wall, with a handle on the +x side (two closed parts).

    Sizes: a standard 11 oz (325 ml) mug is ~9.5 cm tall and 8-8.5 cm across; handles reach 2.5-3.5 cm.
    """
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
    outside = _palette(rng)
    inside = np.clip(outside.astype(int) + 80, 0, 255).astype(np.uint8)
    cb = _paint(len(body[0]), outside)
    radial = np.linalg.norm(body[0][:, [0, 2]], axis=1)
    cb[(radial < r - t / 2) & (body[0][:, 1] > base - 1e-9)] = inside
    return _join((*body, cb), (*handle, _paint(len(handle[0]), outside)))


def _sdf_box(p: np.ndarray, lo, hi, radius: float) -> np.ndarray:
    """Signed distance (negative inside) to a box with edges rounded by ``radius``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    q = np.abs(p - (lo + hi) / 2) - ((hi - lo) / 2 - radius)
    return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(axis=-1), 0.0) - radius


def _sdf_cylinder_z(p: np.ndarray, centre, r: float, z0: float, z1: float, radius: float) -> np.ndarray:
    """Signed distance (negative inside) to a cylinder along z with rounded rims."""
    d = np.stack(
        [np.linalg.norm(p[..., :2] - np.asarray(centre, float), axis=-1) - (r - radius),
         np.abs(p[..., 2] - (z0 + z1) / 2) - ((z1 - z0) / 2 - radius)],
        axis=-1,
    )
    return np.linalg.norm(np.maximum(d, 0.0), axis=-1) + np.minimum(d.max(axis=-1), 0.0) - radius


def _mesh_from_sdf(parts, colors, lo, hi, pitch: float, faces: int):
    """One closed surface for the union of SDF ``parts`` (marching cubes, then decimation).

    A true union has no faces buried inside other parts, so every surface point is on the outside.
    Each vertex takes the colour of the part nearest to it.
    """
    import fast_simplification
    from skimage.measure import marching_cubes

    lo = np.asarray(lo, float) - 2.37 * pitch  # off the parts' planes: no field value is exactly 0
    n = np.ceil((np.asarray(hi, float) + 2 * pitch - lo) / pitch).astype(int) + 1
    axes = [lo[k] + pitch * np.arange(n[k]) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)
    field_ = np.min([part(grid) for part in parts], axis=0)
    v, f, _, _ = marching_cubes(field_, level=0.0, spacing=(pitch,) * 3)
    mesh = trimesh.Trimesh(v + lo, f, process=True)
    # decimation now and then pinches an edge (4 faces on it): then try other settings, or more faces
    for target, agg in ((faces, 7), (faces, 3), (faces, 1), (2 * faces, 3), (4 * faces, 3)):
        p, fa = fast_simplification.simplify(
            mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), target_count=target, agg=agg
        )
        small = trimesh.Trimesh(np.asarray(p, float), fa, process=True)
        if small.is_watertight and small.is_winding_consistent:
            mesh = small
            break
    verts = np.asarray(mesh.vertices)
    nearest = np.argmin([np.abs(part(verts)) for part in parts], axis=0)
    return verts, _outward(verts, np.asarray(mesh.faces)), np.asarray(colors, dtype=np.uint8)[nearest]


def camera(rng: np.random.Generator):
    """A mirrorless/compact camera: body 10-14 x 6.5-9 x 3-4.5 cm, grip, hump, button, lens along +z.

    Sizes: e.g. Sony a6000 120 x 67 x 45 mm, Canon EOS M50 116 x 88 x 59 mm, Fujifilm X-T30
    118 x 83 x 47 mm; kit lenses are 5.5-7 cm across and protrude 3-6 cm. The parts are rounded
    signed-distance shapes joined into one closed surface (``_mesh_from_sdf``), so no face is buried.
    """
    w = rng.uniform(0.10, 0.14)
    hgt = rng.uniform(0.065, 0.09)
    d = rng.uniform(0.030, 0.045)
    rl = min(rng.uniform(0.026, 0.034), 0.46 * hgt)  # the lens never reaches below the body: it stands
    ll = rng.uniform(0.03, 0.06)
    grip_w = w * rng.uniform(0.18, 0.25)
    grip_d = rng.uniform(0.010, 0.018)
    hump_w, hump_h = w * rng.uniform(0.25, 0.35), hgt * rng.uniform(0.12, 0.2)
    lens_x = rng.uniform(-0.15, -0.02) * w
    lens_y = min(hgt / 2 - rl, 0.0) + hgt * rng.uniform(0.0, 0.05)
    dark = _palette(rng, (0.0, 0.15), (0.08, 0.25))
    trim = _palette(rng, (0.0, 0.2), (0.55, 0.85))
    z_lens = d / 2 - 0.002
    parts = [
        lambda p: _sdf_box(p, [-w / 2, -hgt / 2, -d / 2], [w / 2, hgt / 2, d / 2], 0.004),
        lambda p: _sdf_box(p, [w / 2 - grip_w, -hgt / 2, 0.0], [w / 2, hgt / 2 - 0.008, d / 2 + grip_d], 0.005),
        lambda p: _sdf_box(
            p, [lens_x - hump_w / 2, 0.0, -d / 2 + 0.004], [lens_x + hump_w / 2, hgt / 2 + hump_h, d / 2 - 0.004], 0.004
        ),
        lambda p: _sdf_cylinder_z(p, [lens_x, lens_y], rl, 0.0, z_lens + ll * 0.85, 0.002),
        lambda p: _sdf_cylinder_z(p, [lens_x, lens_y], rl * 1.06, z_lens + ll * 0.85, z_lens + ll, 0.0015),
        lambda p: _sdf_box(  # shutter button on top of the grip
            p, [w / 2 - grip_w / 2 - 0.005, 0.0, d / 2 - 0.011], [w / 2 - grip_w / 2 + 0.005, hgt / 2 + 0.003,
                                                                  d / 2 - 0.001], 0.002
        ),
    ]
    colors = [dark, (0.6 * dark).astype(np.uint8), dark, dark, trim, trim]
    hi = [w / 2, hgt / 2 + hump_h, z_lens + ll]
    lo = [-w / 2, min(-hgt / 2, lens_y - rl * 1.06), -d / 2]
    return _mesh_from_sdf(parts, colors, lo, hi, 0.0015, 3000)


def laptop(rng: np.random.Generator):
    """An open laptop: base 30-36 x 21-25 cm, 1.5-2.2 cm thick; lid 5-8 mm, opened 75-130 degrees.

    Sizes: 13.3-15.6 inch laptops measure 30-36 cm x 21-25 cm with 1.5-2.5 cm bases; the opening
    angle (between base and lid) is where people use them, 75-130 degrees. The hinge runs along x at
    the back (-z); the screen faces +z.
    """
    w = rng.uniform(0.30, 0.36)
    dep = rng.uniform(0.21, 0.25)
    tb = rng.uniform(0.015, 0.022)
    tl = rng.uniform(0.005, 0.008)
    angle = np.deg2rad(rng.uniform(75.0, 130.0))
    base = _box([-w / 2, 0.0, -dep / 2], [w / 2, tb, dep / 2], 3)
    lid_v, lid_f = _box([-w / 2, 0.0, 0.0], [w / 2, tl, dep - 0.004], 3)
    screen = lid_v[:, 1] < 1e-9  # the face that lies on the keyboard when closed
    pivot = np.array([0.0, tb - tl / 2, -dep / 2 + tl / 2])  # slightly inside the base: the parts overlap
    ca, sa = np.cos(angle), np.sin(angle)
    dz, dy = lid_v[:, 2], lid_v[:, 1]
    lid_v = np.stack([lid_v[:, 0], pivot[1] + dz * sa + dy * ca, pivot[2] + dz * ca - dy * sa], axis=1)
    shell = _palette(rng, (0.0, 0.15), (0.3, 0.85))
    lid_c = _paint(len(lid_v), shell)
    lid_c[screen] = (20, 22, 28)
    base_c = _paint(len(base[0]), shell)
    base_c[base[0][:, 1] > tb - 1e-9] = (0.5 * shell).astype(np.uint8)  # keyboard deck
    return _join((*base, base_c), (lid_v, _outward(lid_v, lid_f), lid_c))


def box(rng: np.random.Generator):
    """A closed box (a packaged-food box): 6-16 x 8-22 x 4-8 cm (cereal/cracker boxes)."""
    ext = [rng.uniform(0.06, 0.16), rng.uniform(0.08, 0.22), rng.uniform(0.04, 0.08)]
    v, f = _box(-np.asarray(ext) / 2, np.asarray(ext) / 2)
    return v, f, _paint(len(v), _palette(rng))


_BUILDERS = {
    "bottle": bottle,
    "bowl": bowl,
    "camera": camera,
    "can": can,
    "laptop": laptop,
    "mug": mug,
    "box": box,
}


def procedural_mesh(category: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of one object of ``category``, centred on its bounding box."""
    v, f, _ = procedural_mesh_colored(category, rng)
    return v, f


def procedural_mesh_colored(
    category: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, faces and per-vertex RGB colours (uint8) of one object, centred on its bounding box."""
    if category not in _BUILDERS:
        raise HoigenError(
            f"unknown procedural category {category!r}; choose from {', '.join(PROCEDURAL_CATEGORIES)}"
        )
    v, f, c = _BUILDERS[category](rng)
    v = v - (v.min(axis=0) + v.max(axis=0)) / 2.0
    return v, f, c


def procedural_objects(
    categories: list[str] | tuple[str, ...] | None = None, n_per_category: int = 1, seed: int = 0
) -> list[ObjectAsset]:
    """``n_per_category`` objects per category (``DEFAULT_CATEGORIES`` when None), ids ``<category>-<index:03d>``.

    Object i of a category depends only on (seed, category, i), not on the other categories asked for.
    """
    cats = list(DEFAULT_CATEGORIES if categories is None else categories)
    if n_per_category < 1:
        raise HoigenError(f"n_per_category must be >= 1 (got {n_per_category})")
    out = []
    for cat in cats:
        for i in range(n_per_category):
            rng = np.random.default_rng([int(seed), zlib.crc32(cat.encode()), i])
            v, f, c = procedural_mesh_colored(cat, rng)
            out.append(ObjectAsset.create(f"{cat}-{i:03d}", cat, v, f, f"procedural:{cat}:{seed}:{i}", colors=c))
    return out
