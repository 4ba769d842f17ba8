"""The embedded hand: a procedurally built stand-in for MANO, saved in MANO's own pickle format.

MANO's licence forbids shipping it, so hoigen builds a rough adult hand from simple parts and writes
it with exactly MANO's keys (``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor``, ``weights``,
``kintree_table``, ``f``, ``hands_components``, ``hands_mean``) plus two keys that identify it:
``hoigen_model`` (:data:`EMBEDDED_HAND_NAME`) and ``tip_vertex_ids`` (thumb, index, middle, ring, pinky).
The very same ``smplx.MANO`` call loads it and real MANO files.

Rest pose, right hand (MANO's convention, read from the real model's rest joints):

- the fingers point along **-x**; the wrist sits at x ~ +0.1 m, the fingertips at x ~ -0.08 m;
- the thumb side is **+z** (index at +z, pinky at -z);
- the palm faces **-y** (the back of the hand faces +y); the hand is flat;
- a finger flexes (curls toward the palm) by a **positive rotation about +z** (more exactly about
  ``finger_direction x palm_normal``); the left hand is the mirror image in x, so there the same
  flexion is a negative rotation about +z (mirror an axis-angle as ``(ax, -ay, -az)``).

Geometry: a rounded palm slab plus one closed tapered tube per finger running from inside the palm
through its three joints to a domed tip. Every part is a closed surface, so the mesh is watertight
(parts overlap where fingers enter the palm). Tube vertices are skinned to their bone, blended
linearly over +-4 mm at each joint; palm vertices follow the wrist. Each row of ``J_regressor``
averages the ring of vertices around that joint, so regressed joints sit at the joint centres.

Shape space (``shapedirs``; one unit of beta is roughly one standard deviation of adult hands):
beta0 scales the whole hand about the wrist (+6 %/unit), beta1 lengthens the fingers (+6 %/unit),
beta2 widens the palm (+8 %/unit, fingers move apart); betas 3-9 do nothing. ``posedirs`` are zero.
``hands_components`` is the identity and ``hands_mean`` zero (hoigen always uses the full 45-D pose).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hoigen.hand.keypoints import FINGERS, MANO_JOINT_NAMES, MANO_PARENTS

EMBEDDED_HAND_NAME = "hoigen-embedded-hand-v0"
EMBEDDED_DIR = Path(__file__).resolve().parent / "assets" / "embedded"

_WRIST = np.array([0.098, 0.0, 0.006])
_PALM_NORMAL = np.array([0.0, -1.0, 0.0])
_RING_WIDTH = 4e-3  # +- blend half-width of the skinning weights at a joint, metres
_FINGER_SIDES = 10  # vertices per finger ring
_PALM_SIDES = 20  # vertices per palm ring


@dataclass(frozen=True)
class _Finger:
    name: str
    base: tuple[float, float, float]  # joint 1 (MCP; CMC for the thumb), metres
    direction: tuple[float, float, float]  # unnormalised rest direction of the finger
    lengths: tuple[float, float, float]  # joint1->joint2, joint2->joint3, joint3->tip
    radius_base: float
    radius_tip: float


def _fan(angle: float) -> tuple[float, float, float]:
    """Direction in the palm plane: -x turned by ``angle`` toward +z (thumb side)."""
    return (-np.cos(angle), 0.0, np.sin(angle))


_FINGERS: tuple[_Finger, ...] = (
    _Finger("thumb", (0.068, -0.008, 0.030), (-0.75, -0.12, 0.65), (0.032, 0.028, 0.030), 0.0120, 0.0085),
    _Finger("index", (0.004, 0.0, 0.025), _fan(0.05), (0.034, 0.022, 0.022), 0.0095, 0.0075),
    _Finger("middle", (0.0, 0.0, 0.004), _fan(-0.03), (0.037, 0.025, 0.024), 0.0098, 0.0077),
    _Finger("ring", (0.008, 0.0, -0.016), _fan(-0.10), (0.034, 0.024, 0.023), 0.0090, 0.0072),
    _Finger("pinky", (0.020, 0.0, -0.034), _fan(-0.22), (0.027, 0.019, 0.020), 0.0080, 0.0065),
)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def design_joints21(side: str = "right") -> np.ndarray:
    """Rest joints (21, 3) of the embedded hand at zero shape, in the common 21 order."""
    rows = [_WRIST]
    for finger in _FINGERS:
        base, d = np.array(finger.base), _unit(np.array(finger.direction))
        s = np.cumsum((0.0,) + finger.lengths)
        rows += [base + d * si for si in s]
    joints = np.array(rows)
    return joints * np.array([-1.0, 1.0, 1.0]) if side == "left" else joints


class _MeshBuilder:
    """Collects closed parts (rings between two apex points) with per-vertex skinning weights."""

    def __init__(self) -> None:
        self.vertices: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.joint_rings: dict[int, np.ndarray] = {}
        self.count = 0

    def add_part(self, start: np.ndarray, rings: list[np.ndarray], end: np.ndarray, weights: np.ndarray):
        """Add a closed part: apex ``start``, rings (each (n,3)), apex ``end``; returns ring offsets."""
        n = len(rings[0])
        offset = self.count
        verts = np.concatenate([start[None], *rings, end[None]])
        ring_first = [offset + 1 + i * n for i in range(len(rings))]
        faces = []
        j = np.arange(n)
        jn = (j + 1) % n
        first = ring_first[0]
        faces.append(np.stack([np.full(n, offset), first + jn, first + j], axis=1))
        for r0, r1 in zip(ring_first[:-1], ring_first[1:], strict=True):
            faces.append(np.stack([r0 + j, r0 + jn, r1 + j], axis=1))
            faces.append(np.stack([r0 + jn, r1 + jn, r1 + j], axis=1))
        last = ring_first[-1]
        end_id = offset + len(verts) - 1
        faces.append(np.stack([last + j, last + jn, np.full(n, end_id)], axis=1))
        faces = np.concatenate(faces)
        # Orient outward: the signed volume of a closed part must be positive.
        tri = verts[faces - offset]
        volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0
        if volume < 0:
            faces = faces[:, ::-1]
        self.vertices.append(verts)
        self.weights.append(weights)
        self.faces.append(faces)
        self.count += len(verts)
        return ring_first, end_id


def _finger_frame(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lateral and palmar unit vectors across a finger with rest direction ``direction``."""
    palmar = _unit(_PALM_NORMAL - direction * (_PALM_NORMAL @ direction))
    lateral = np.cross(direction, palmar)
    return lateral, palmar


def _ellipse(n: int, power: float = 2.0) -> np.ndarray:
    """(n, 2) points of a superellipse of unit half-axes, symmetric so their mean is zero."""
    theta = 2.0 * np.pi * (np.arange(n) + 0.5) / n
    c, s = np.cos(theta), np.sin(theta)
    e = 2.0 / power
    return np.stack([np.sign(c) * np.abs(c) ** e, np.sign(s) * np.abs(s) ** e], axis=1)


def _add_finger(mb: _MeshBuilder, finger: _Finger, joints: tuple[int, int, int], regressor_rows: dict):
    base, d = np.array(finger.base), _unit(np.array(finger.direction))
    lateral, palmar = _finger_frame(d)
    l1, l2, l3 = finger.lengths
    s_joint = (0.0, l1, l1 + l2)
    s_tip = l1 + l2 + l3
    r_end = finger.radius_tip
    dome_len = 0.8 * r_end
    s_dome = s_tip - dome_len
    w = _RING_WIDTH
    start = -0.022 if finger.name != "thumb" else -0.018
    cyl = [start, start / 2]
    for a, b in zip(s_joint, s_joint[1:] + (s_dome,), strict=True):
        cyl += [a - w, a, a + w, (a + b) / 2]
    cyl.append(s_dome)
    cyl = sorted(set(round(s, 6) for s in cyl))
    profile = _ellipse(_FINGER_SIDES)

    def radius(s: float) -> float:
        t = np.clip(s / s_dome, 0.0, 1.0)
        return (1 - t) * finger.radius_base + t * finger.radius_tip

    ring_s, ring_scale = [], []
    for s in cyl:
        ring_s.append(s)
        ring_scale.append(radius(s))
    for phi in (np.pi / 6, np.pi / 3):  # dome rings
        ring_s.append(s_dome + dome_len * np.sin(phi))
        ring_scale.append(r_end * np.cos(phi))
    rings = [
        base + d * s + r * (profile[:, :1] * lateral + 0.85 * profile[:, 1:] * palmar)
        for s, r in zip(ring_s, ring_scale, strict=True)
    ]
    bones = (0,) + joints  # wrist, joint1, joint2, joint3

    def weight_row(s: float) -> np.ndarray:
        row = np.zeros(16)
        k = int(np.searchsorted(s_joint, s, side="right"))  # bone index in ``bones``
        row[bones[k]] = 1.0
        for i, sj in enumerate(s_joint):
            if abs(s - sj) < w:  # blend the bone before joint i with the bone after it
                t = (s - sj + w) / (2 * w)
                row[:] = 0.0
                row[bones[i]] += 1.0 - t
                row[bones[i + 1]] += t
        return row

    weights = [weight_row(start)]
    for s in ring_s:
        weights += [weight_row(s)] * _FINGER_SIDES
    weights.append(weight_row(s_tip))
    ring_first, tip_id = mb.add_part(base + d * start, rings, base + d * s_tip, np.array(weights))
    for joint, sj in zip(joints, s_joint, strict=True):
        i = ring_s.index(round(sj, 6))
        regressor_rows[joint] = np.arange(ring_first[i], ring_first[i] + _FINGER_SIDES)
    return tip_id


def _knuckle_x(z: np.ndarray) -> np.ndarray:
    """x of the palm's distal edge as a function of z: it follows the knuckle line."""
    fingers = sorted(_FINGERS[1:], key=lambda f: f.base[2])
    zs = [f.base[2] for f in fingers]
    xs = [f.base[0] - 0.010 for f in fingers]
    return np.interp(z, zs, xs)


def _add_palm(mb: _MeshBuilder, regressor_rows: dict) -> None:
    profile = _ellipse(_PALM_SIDES, power=3.0)
    wrist_half = (0.028, 0.014)  # half width (z), half thickness (y)
    knuckle_half = (0.042, 0.0125)
    zc = (_WRIST[2], -0.004)
    rings = []

    def ring(u: float, scale: float, dx: float) -> np.ndarray:
        hz = (1 - u) * wrist_half[0] + u * knuckle_half[0]
        hy = (1 - u) * wrist_half[1] + u * knuckle_half[1]
        z = (1 - u) * zc[0] + u * zc[1] + scale * hz * profile[:, 0]
        y = scale * hy * profile[:, 1]
        x = (1 - u) * _WRIST[0] + u * _knuckle_x(z) + dx
        return np.stack([x, y, z], axis=1)

    caps = ((0.45, 0.011), (0.8, 0.007))  # (scale, outward offset) of the dome rings
    for scale, dx in caps:
        rings.append(ring(0.0, scale, dx))
    wrist_ring = len(rings)
    for u in np.linspace(0.0, 1.0, 11):
        rings.append(ring(u, 1.0, 0.0))
    for scale, dx in caps[::-1]:
        rings.append(ring(1.0, scale, -dx * 0.8))
    start = np.array([_WRIST[0] + 0.013, 0.0, zc[0]])
    end = np.array([_knuckle_x(np.array([zc[1]]))[0] - 0.010, 0.0, zc[1]])
    n_verts = 2 + len(rings) * _PALM_SIDES
    weights = np.zeros((n_verts, 16))
    weights[:, 0] = 1.0
    ring_first, _ = mb.add_part(start, rings, end, weights)
    regressor_rows[0] = np.arange(ring_first[wrist_ring], ring_first[wrist_ring] + _PALM_SIDES)


def build_hand_data(side: str = "right") -> dict:
    """The embedded hand as a MANO-format dict (numpy arrays) for ``side`` 'right' or 'left'."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    mb = _MeshBuilder()
    rows: dict[int, np.ndarray] = {}
    _add_palm(mb, rows)
    tips = []
    for finger in _FINGERS:
        joints = tuple(MANO_JOINT_NAMES.index(f"{finger.name}{i}") for i in (1, 2, 3))
        tips.append(_add_finger(mb, finger, joints, rows))
    v = np.concatenate(mb.vertices)
    f = np.concatenate(mb.faces)
    weights = np.concatenate(mb.weights)
    n = len(v)
    regressor = np.zeros((16, n))
    for j, ids in rows.items():
        regressor[j, ids] = 1.0 / len(ids)

    shapedirs = np.zeros((n, 3, 10))
    shapedirs[:, :, 0] = 0.06 * (v - _WRIST)
    palm_zc = -0.004
    owner = np.full(n, -1)  # finger index owning each vertex (-1: palm)
    start = 0
    for part, verts in enumerate(mb.vertices):
        owner[start : start + len(verts)] = part - 1
        start += len(verts)
    for k, finger in enumerate(_FINGERS):
        sel = owner == k
        base, d = np.array(finger.base), _unit(np.array(finger.direction))
        along = np.clip((v[sel] - base) @ d, 0.0, None)
        shapedirs[sel, :, 1] = 0.06 * along[:, None] * d
        shapedirs[sel, 2, 2] = 0.08 * (base[2] - palm_zc)
    palm = owner == -1
    shapedirs[palm, 2, 2] = 0.08 * (v[palm, 2] - palm_zc)

    if side == "left":
        mirror = np.array([-1.0, 1.0, 1.0])
        v = v * mirror
        shapedirs = shapedirs * mirror[None, :, None]
        f = f[:, ::-1]
    kintree = np.array([MANO_PARENTS, list(range(16))], dtype=np.int64).astype(np.uint32)
    assert [FINGERS.index(fi.name) for fi in _FINGERS] == list(range(5))
    return {
        "v_template": v.astype(np.float64),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": _Zeros((n, 3, 135)),
        "J_regressor": _sparse(regressor),
        "weights": weights.astype(np.float32),
        "kintree_table": kintree,
        "f": np.ascontiguousarray(f).astype(np.uint32),
        "hands_components": np.eye(45),
        "hands_mean": np.zeros(45),
        "hoigen_model": EMBEDDED_HAND_NAME,
        "tip_vertex_ids": [int(t) for t in tips],
    }


class _Zeros:
    """Stands for an all-zero float64 array; pickles as a ``numpy.zeros`` call, so the file stays tiny
    and any plain ``pickle.load`` (smplx's own included) still returns a real array."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __reduce__(self):
        return (np.zeros, (self.shape, "float64"))

    def __array__(self, dtype=None, copy=None):
        return np.zeros(self.shape, dtype=dtype or np.float64)


def _sparse(dense: np.ndarray):
    """The regressor as a CSC matrix, as real MANO stores it (smplx densifies it)."""
    import scipy.sparse as sp

    return sp.csc_matrix(dense)


def build_hand_files(out_dir: str | Path) -> list[Path]:
    """Write ``MANO_RIGHT.pkl`` and ``MANO_LEFT.pkl`` of the embedded hand into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for side, name in (("right", "MANO_RIGHT.pkl"), ("left", "MANO_LEFT.pkl")):
        path = out / name
        tmp = path.with_suffix(".pkl.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(build_hand_data(side), fh, protocol=4)
        tmp.replace(path)
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m hoigen.hand.embedded  rebuilds the shipped files
    for p in build_hand_files(EMBEDDED_DIR):
        print(p, p.stat().st_size)
