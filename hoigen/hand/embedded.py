"""The embedded hand: a procedurally built stand-in for MANO, saved in MANO's own pickle format.

MANO's licence forbids shipping it, so hoigen builds an adult hand from a designed skeleton and an
implicit skin and writes it with exactly MANO's keys (``v_template``, ``shapedirs``, ``posedirs``,
``J_regressor``, ``weights``, ``kintree_table``, ``f``, ``hands_components``, ``hands_mean``) plus
keys that identify it: ``hoigen_model`` (:data:`EMBEDDED_HAND_NAME`), ``tip_vertex_ids`` (thumb,
index, middle, ring, pinky) and ``hands_components_sd`` (the standard deviation of each PCA
coefficient over the grasp poses it was fitted to). The very same ``smplx.MANO`` call loads it and
real MANO files.

Rest pose, right hand (MANO's convention, read from the real model's rest joints):

- the fingers point along **-x**; the wrist joint sits at x = +0.092 m, the middle fingertip at
  x ~ -0.094 m;
- the thumb side is **+z** (index at +z, pinky at -z); the palm faces **-y**; the hand is flat;
- the left hand is the mirror image in x (mirror an axis-angle pose as ``(ax, -ay, -az)``).

Skeleton and proportions (:data:`ANTHRO_RANGES_MM` holds the published ranges the tests check):
phalanx lengths after Buryanov and Kotiuk, "Proportions of hand segments", Int. J. Morphol.
28(3):755-758, 2010 (adult means, mm: index 39.8/22.4/15.8, middle 44.6/26.3/17.4,
ring 41.4/25.7/17.3, little 32.7/18.1/15.6; thumb proximal 30.9, distal 21.7), joint-to-tip
segments adding ~5 mm of fingertip pulp; hand length (wrist crease to the middle fingertip) and
hand breadth (across the metacarpal heads) after the 1988 US Army anthropometric survey (Gordon et
al., ANSUR, NATICK/TR-89/044: hand length men 194 +- 10 mm, women 181 +- 9 mm; breadth men
90 +- 4 mm, women 79 +- 4 mm). The embedded hand sits between the male and female means.

Skin (:mod:`hoigen.hand.skin`): a rounded palm slab, a thenar pad and tapered capsules along every
finger, smoothly joined, sampled on a 2.5 mm grid, meshed by marching cubes and decimated to about
900 vertices: one closed, manifold surface. Skinning weights follow each vertex's nearest bone
chain and blend smoothly across each joint over +-(4-10) mm (wider at the knuckles and the thumb's
base), then are smoothed over the mesh. Each row of ``J_regressor`` is a non-negative, sum-to-one
combination of the vertices in a slab around that joint that reproduces the designed joint centre.

Shape space (``shapedirs``; one unit of beta is about one standard deviation of adult hands):

- beta0: overall size, scaling about the wrist (+5 %/unit);
- beta1: finger length (index..pinky, from the knuckle to the tip, +5.5 %/unit);
- beta2: palm width (the metacarpals and the fingers move apart, +5.5 %/unit);
- beta3: palm length (the knuckles move away from the wrist, +5.5 %/unit);
- beta4: finger thickness (radius of index..pinky and the thumb phalanges, +7 %/unit);
- beta5: palm thickness (+7 %/unit); beta6: thumb length (+6 %/unit); betas 7-9 do nothing.

``posedirs`` are zero (no pose correctives). ``hands_components`` (45 x 45, orthonormal rows) and
``hands_mean`` come from a PCA over grasp poses sampled within the joint limits
(:mod:`hoigen.hand.grasp_prior`), so ``use_pca=True`` with 6-45 components gives plausible poses.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hoigen.hand.keypoints import FINGERS, MANO_JOINT_NAMES, MANO_PARENTS, joints21_from_mano

EMBEDDED_HAND_NAME = "hoigen-embedded-hand-v1"
EMBEDDED_DIR = Path(__file__).resolve().parent / "assets" / "embedded"

# Published adult ranges (about mean +- 2 sd across sexes, mm) for the measurements the tests make
# on the flat embedded hand; sources in the module docstring. Segments are joint-to-joint (MANO
# joints), the last one joint-to-tip, which adds the fingertip pulp to the distal phalanx.
ANTHRO_RANGES_MM: dict[str, tuple[float, float]] = {
    "hand_length": (170.0, 200.0),
    "hand_breadth": (72.0, 98.0),
    "index": (34.0, 46.0), "index_middle": (19.0, 26.0), "index_distal": (17.0, 25.0),
    "middle": (38.0, 51.0), "middle_middle": (22.0, 31.0), "middle_distal": (18.0, 26.0),
    "ring": (35.0, 48.0), "ring_middle": (21.0, 30.0), "ring_distal": (18.0, 26.0),
    "pinky": (27.0, 39.0), "pinky_middle": (15.0, 22.0), "pinky_distal": (16.0, 24.0),
    "thumb_metacarpal": (38.0, 50.0), "thumb": (26.0, 36.0), "thumb_distal": (22.0, 31.0),
}  # fmt: skip

_WRIST = np.array([0.092, 0.0, 0.004])
_GRID_STEP = 2.5e-3
_TARGET_VERTICES = 900
# Shape rates per unit beta (fractions), see the module docstring.
_RATES = {"size": 0.05, "finger": 0.055, "width": 0.055, "palm_length": 0.055, "thick": 0.07,
          "palm_thick": 0.07, "thumb": 0.06}  # fmt: skip


@dataclass(frozen=True)
class _Finger:
    name: str
    base: tuple[float, float, float]  # joint 1 (MCP; CMC for the thumb), metres
    direction: tuple[float, float, float]  # unnormalised rest direction of the finger
    lengths: tuple[float, float, float]  # joint1->joint2, joint2->joint3, joint3->tip
    radii: tuple[float, float, float, float]  # skin radius at joint1, joint2, joint3, tip
    blend: tuple[float, float, float]  # +- skinning blend half-width at joint1..3, metres


def _fan(angle: float) -> tuple[float, float, float]:
    """Direction in the palm plane: -x turned by ``angle`` toward +z (thumb side)."""
    return (-np.cos(angle), 0.0, np.sin(angle))


_FINGERS: tuple[_Finger, ...] = (
    _Finger("thumb", (0.068, -0.010, 0.026), (-0.74, -0.16, 0.62), (0.043, 0.031, 0.027),
            (0.0125, 0.0104, 0.0094, 0.0086), (0.010, 0.006, 0.0045)),
    _Finger("index", (0.006, 0.0, 0.028), _fan(0.10), (0.040, 0.023, 0.021),
            (0.0098, 0.0087, 0.0079, 0.0072), (0.008, 0.005, 0.004)),
    _Finger("middle", (0.0, 0.0, 0.006), _fan(0.0), (0.045, 0.027, 0.022),
            (0.0100, 0.0090, 0.0080, 0.0073), (0.008, 0.005, 0.004)),
    _Finger("ring", (0.005, 0.0, -0.015), _fan(-0.09), (0.042, 0.026, 0.022),
            (0.0094, 0.0085, 0.0076, 0.0070), (0.008, 0.005, 0.004)),
    _Finger("pinky", (0.015, 0.0, -0.035), _fan(-0.19), (0.033, 0.019, 0.020),
            (0.0084, 0.0076, 0.0069, 0.0064), (0.007, 0.0045, 0.004)),
)  # fmt: skip

# Palm outline in the x-z plane (right hand), counter-clockwise, metres: wrist end, ulnar side,
# the knuckle line just proximal of the finger joints, radial side.
_PALM_OUTLINE = np.array([
    (0.104, 0.022), (0.104, -0.018), (0.078, -0.036), (0.034, -0.045), (0.012, -0.041),
    (0.004, -0.028), (-0.002, -0.012), (-0.004, 0.008), (0.000, 0.028), (0.008, 0.038),
    (0.045, 0.040), (0.082, 0.032),
])  # fmt: skip


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _finger_points(finger: _Finger) -> np.ndarray:
    """(4, 3) joint1, joint2, joint3, tip of a finger at rest."""
    base, d = np.array(finger.base), _unit(np.array(finger.direction))
    return base + d[None] * np.cumsum((0.0,) + finger.lengths)[:, None]


def design_joints21(side: str = "right") -> np.ndarray:
    """Designed rest joints (21, 3) of the embedded hand at zero shape, in the common 21 order."""
    joints = np.concatenate([_WRIST[None]] + [_finger_points(f) for f in _FINGERS])
    return joints * np.array([-1.0, 1.0, 1.0]) if side == "left" else joints


# ----------------------------------------------------------------------------------------------------
# Skin


def _palm_half_thickness(x: np.ndarray) -> np.ndarray:
    t = np.clip(x / _WRIST[0], 0.0, 1.0)
    return 0.0135 + 0.0030 * t  # 27 mm thick at the knuckles, 33 mm at the wrist


def hand_sdf(p: np.ndarray) -> np.ndarray:
    """Signed distance (N,) of the right embedded hand's skin at zero shape (negative inside)."""
    from hoigen.hand.skin import culled, ellipsoid, round_cone, rounded_slab, smin

    m = 0.02  # culling margin: primitives farther than this from a point do not change its distance

    def cone(a, b, ra, rb):
        lo, hi = np.minimum(a, b) - max(ra, rb) - m, np.maximum(a, b) + max(ra, rb) + m
        return culled(p, lo, hi, lambda q: round_cone(q, a, b, ra, rb))

    h_max = float(_palm_half_thickness(np.array([_WRIST[0]]))[0])
    lo = np.array([_PALM_OUTLINE[:, 0].min() - m, -h_max - m, _PALM_OUTLINE[:, 1].min() - m])
    hi = np.array([_PALM_OUTLINE[:, 0].max() + m, h_max + m, _PALM_OUTLINE[:, 1].max() + m])
    palm = culled(p, lo, hi, lambda q: rounded_slab(q, _PALM_OUTLINE, _palm_half_thickness, 0.009))
    thumb = _FINGERS[0]
    tj = _finger_points(thumb)
    d = _unit(np.array(thumb.direction))
    across = _unit(np.cross(d, [0.0, -1.0, 0.0]))
    palmar = np.cross(across, d)
    centre = tj[0] + 0.45 * (tj[1] - tj[0]) + 0.003 * palmar
    radii = np.array([0.030, 0.016, 0.013])
    thenar = culled(p, centre - 0.03 - m, centre + 0.03 + m,
                    lambda q: ellipsoid(q, centre, np.stack([d, across, palmar]), radii))  # fmt: skip
    body = smin(palm, thenar, 0.010)
    fingers = np.full(len(p), np.inf)
    for finger in _FINGERS:
        j = _finger_points(finger)
        dj = _unit(j[1] - j[0])
        r = finger.radii
        back = j[0] - dj * (0.014 if finger.name != "thumb" else 0.006)
        end = j[3] - dj * r[3]
        dist = cone(back, j[0], r[0], r[0])
        dist = np.minimum(dist, cone(j[0], j[1], r[0], r[1]))
        dist = np.minimum(dist, cone(j[1], j[2], r[1], r[2]))
        dist = np.minimum(dist, cone(j[2], end, r[2], r[3]))
        if finger.name == "thumb":
            body = smin(body, dist, 0.008)
        else:
            fingers = np.minimum(fingers, dist)
    return smin(body, fingers, 0.006)


def _skin_mesh() -> tuple[np.ndarray, np.ndarray]:
    from hoigen.hand.skin import mesh_from_sdf

    lo = np.array([-0.115, -0.045, -0.070])
    hi = np.array([0.125, 0.035, 0.115])
    return mesh_from_sdf(hand_sdf, lo, hi, _GRID_STEP, _TARGET_VERTICES, relax=10)


# ----------------------------------------------------------------------------------------------------
# Skinning: every vertex is assigned to the bone chains nearest to it


@dataclass
class _Chains:
    """Per-vertex, per-finger quantities: ``s`` (V, 5) arc length along each finger's chain measured
    from its joint 1 (negative toward the wrist), ``dist`` (V, 5) distance to the chain, ``own``
    (V, 5) soft ownership (rows sum to 1), ``axis_point`` (V, 5, 3) the nearest chain point."""

    s: np.ndarray
    dist: np.ndarray
    own: np.ndarray
    axis_point: np.ndarray


def _chains(v: np.ndarray, tau: float = 0.003) -> _Chains:
    n = len(v)
    s_all, d_all, q_all = np.zeros((n, 5)), np.zeros((n, 5)), np.zeros((n, 5, 3))
    for k, finger in enumerate(_FINGERS):
        pts = np.concatenate([_WRIST[None], _finger_points(finger)])  # wrist, j1, j2, j3, tip
        seg_len = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        start = np.concatenate([[-seg_len[0]], -seg_len[0] + np.cumsum(seg_len)[:-1]])
        best = np.full(n, np.inf)
        for i in range(4):
            a, b = pts[i], pts[i + 1]
            ab = b - a
            t = np.clip((v - a) @ ab / (ab @ ab), 0.0, 1.0)
            q = a + t[:, None] * ab
            dist = np.linalg.norm(v - q, axis=1)
            better = dist < best - 1e-12
            best = np.where(better, dist, best)
            s_all[better, k] = start[i] + t[better] * seg_len[i]
            q_all[better, k] = q[better]
        d_all[:, k] = best
    logits = -(d_all - d_all.min(axis=1, keepdims=True)) / tau
    own = np.exp(logits)
    own /= own.sum(axis=1, keepdims=True)
    return _Chains(s_all, d_all, own, q_all)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _finger_bone_weights(s: np.ndarray, finger: _Finger) -> np.ndarray:
    """(V, 4) weights of (wrist, joint1, joint2, joint3) bones along one chain at arc length ``s``."""
    joints_s = np.cumsum((0.0,) + finger.lengths[:2])
    # Cumulative "past joint i" ramps; bone weights are their differences.
    ramps = [_smoothstep((s - sj + h) / (2 * h)) for sj, h in zip(joints_s, finger.blend, strict=True)]
    past = np.stack([np.ones_like(s)] + ramps + [np.zeros_like(s)], axis=1)
    return past[:, :-1] - past[:, 1:]


def _skin_weights(v: np.ndarray, f: np.ndarray, chains: _Chains) -> np.ndarray:
    weights = np.zeros((len(v), 16))
    for k, finger in enumerate(_FINGERS):
        bones = [0] + [MANO_JOINT_NAMES.index(f"{finger.name}{i}") for i in (1, 2, 3)]
        w = _finger_bone_weights(chains.s[:, k], finger) * chains.own[:, k : k + 1]
        for col, bone in enumerate(bones):
            weights[:, bone] += w[:, col]
    # A few rounds of neighbour averaging smooth what the nearest-chain split leaves sharp.
    neighbours = _vertex_neighbours(len(v), f)
    for _ in range(2):
        weights = 0.5 * weights + 0.5 * (neighbours @ weights)
    weights[weights < 2e-3] = 0.0  # no faint pull from far bones: a fingertip moves with its finger only
    return weights / weights.sum(axis=1, keepdims=True)


def _vertex_neighbours(n: int, f: np.ndarray):
    """Row-normalised (V, V) sparse adjacency of the mesh."""
    import scipy.sparse as sp

    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adj = sp.csr_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    adj.data[:] = 1.0
    deg = np.asarray(adj.sum(axis=1)).ravel()
    return sp.diags(1.0 / deg) @ adj


# ----------------------------------------------------------------------------------------------------
# Joint regressor and fingertips


def _regressor_row(v: np.ndarray, ids: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative weights over ``ids`` summing to 1 whose combination of ``v[ids]`` hits ``target``."""
    from scipy.optimize import nnls

    pts = v[ids]
    scale = 1e3  # millimetres keep the system well conditioned
    a = np.concatenate([(pts - target).T * scale, np.full((1, len(ids)), 10.0), 0.05 * np.eye(len(ids))])
    b = np.concatenate([np.zeros(3), [10.0], np.zeros(len(ids))])
    w, _ = nnls(a, b)
    return w / w.sum()


def _joint_regressor(v: np.ndarray, chains: _Chains) -> np.ndarray:
    reg = np.zeros((16, len(v)))
    axis_dist = np.abs(v[:, 0] - _WRIST[0])
    wrist_ids = np.flatnonzero(axis_dist < 0.004)
    reg[0, wrist_ids] = _regressor_row(v, wrist_ids, _WRIST)
    for k, finger in enumerate(_FINGERS):
        pts = _finger_points(finger)
        for i, sj in enumerate(np.cumsum((0.0,) + finger.lengths[:2])):
            owned = chains.own[:, k] > 0.5
            ids = np.flatnonzero(owned & (np.abs(chains.s[:, k] - sj) < 0.004) & (chains.dist[:, k] < 0.02))
            row = MANO_JOINT_NAMES.index(f"{finger.name}{i + 1}")
            reg[row, ids] = _regressor_row(v, ids, pts[i])
    return reg


def _tip_ids(v: np.ndarray, chains: _Chains) -> list[int]:
    """The most distal vertex of each finger (thumb..pinky), nearest its axis."""
    tips = []
    for k, finger in enumerate(_FINGERS):
        total = sum(finger.lengths)
        score = chains.s[:, k] - 0.5 * chains.dist[:, k] * (chains.own[:, k] > 0.5)
        score[chains.own[:, k] < 0.5] = -np.inf
        tips.append(int(np.argmax(score)))
        if chains.s[tips[-1], k] < total - 0.005:
            raise ValueError(f"embedded hand: no skin vertex at the {finger.name} tip; check the skin design")
    return tips


# ----------------------------------------------------------------------------------------------------
# Shape space


def _shapedirs(v: np.ndarray, chains: _Chains, weights: np.ndarray) -> np.ndarray:
    n = len(v)
    dirs = np.zeros((n, 3, 10))
    dirs[:, :, 0] = _RATES["size"] * (v - _WRIST)
    palm_zc = 0.0
    # fingerness: how much a vertex belongs to the fingers (not the palm), per finger.
    own = chains.own
    fingerness = np.stack([_smoothstep((chains.s[:, k] + f.blend[0]) / (2 * f.blend[0]))
                           for k, f in enumerate(_FINGERS)], axis=1) * own  # fmt: skip
    palmness = 1.0 - fingerness.sum(axis=1)
    for k, finger in enumerate(_FINGERS):
        d = _unit(np.array(finger.direction))
        base = np.array(finger.base)
        total = sum(finger.lengths)
        if finger.name == "thumb":
            along = np.clip(chains.s[:, k], 0.0, total)
            dirs[:, :, 6] += _RATES["thumb"] * (own[:, k] * along)[:, None] * d
            phal = _smoothstep((chains.s[:, k] - finger.lengths[0] + 0.01) / 0.02) * own[:, k]
        else:
            along = np.clip(chains.s[:, k], 0.0, total)
            dirs[:, :, 1] += _RATES["finger"] * (own[:, k] * along)[:, None] * d
            phal = fingerness[:, k]
        dirs[:, 2, 2] += _RATES["width"] * fingerness[:, k] * (base[2] - palm_zc)
        dirs[:, 0, 3] += -_RATES["palm_length"] * fingerness[:, k] * (_WRIST[0] - base[0])
        dirs[:, :, 4] += _RATES["thick"] * phal[:, None] * (v - chains.axis_point[:, k])
    dirs[:, 2, 2] += _RATES["width"] * palmness * (v[:, 2] - palm_zc)
    dirs[:, 0, 3] += -_RATES["palm_length"] * palmness * np.clip(_WRIST[0] - v[:, 0], 0.0, None)
    dirs[:, 1, 5] += _RATES["palm_thick"] * palmness * v[:, 1]
    return dirs


# ----------------------------------------------------------------------------------------------------
# Assembly


@dataclass
class _RightHand:
    v: np.ndarray
    f: np.ndarray
    weights: np.ndarray
    regressor: np.ndarray
    shapedirs: np.ndarray
    tips: list[int]
    components: np.ndarray
    mean: np.ndarray
    sd: np.ndarray


_CACHE: dict[str, _RightHand] = {}


def _right_hand() -> _RightHand:
    if "right" not in _CACHE:
        from hoigen.hand.grasp_prior import pose_pca
        from hoigen.hand.limits import JointSpace

        v, f = _skin_mesh()
        chains = _chains(v)
        weights = _skin_weights(v, f, chains)
        reg = _joint_regressor(v, chains)
        tips = _tip_ids(v, chains)
        joints21 = joints21_from_mano(reg @ v, v, tips)
        space = JointSpace.from_rest_joints(joints21, "right")
        components, mean, sd = pose_pca(space, np.random.default_rng(20261125))
        _CACHE["right"] = _RightHand(v, f, weights, reg, _shapedirs(v, chains, weights), tips,
                                     components, mean, sd)  # fmt: skip
    return _CACHE["right"]


def build_hand_data(side: str = "right") -> dict:
    """The embedded hand as a MANO-format dict (numpy arrays) for ``side`` 'right' or 'left'."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    h = _right_hand()
    v, f, shapedirs = h.v, h.f, h.shapedirs
    components, mean = h.components, h.mean
    if side == "left":
        mirror = np.array([-1.0, 1.0, 1.0])
        v = v * mirror
        shapedirs = shapedirs * mirror[None, :, None]
        f = f[:, ::-1]
        flip = np.tile([1.0, -1.0, -1.0], 15)  # an axis-angle mirrored in x
        components, mean = components * flip, mean * flip
    kintree = np.array([MANO_PARENTS, list(range(16))], dtype=np.int64).astype(np.uint32)
    assert [FINGERS.index(fi.name) for fi in _FINGERS] == list(range(5))
    return {
        "v_template": np.ascontiguousarray(v, dtype=np.float64),
        "shapedirs": np.ascontiguousarray(shapedirs, dtype=np.float32),
        "posedirs": _Zeros((len(v), 3, 135)),
        "J_regressor": _sparse(h.regressor),
        "weights": np.ascontiguousarray(h.weights, dtype=np.float32),
        "kintree_table": kintree,
        "f": np.ascontiguousarray(f).astype(np.uint32),
        "hands_components": np.ascontiguousarray(components, dtype=np.float64),
        "hands_mean": np.ascontiguousarray(mean, dtype=np.float64),
        "hands_components_sd": np.ascontiguousarray(h.sd, dtype=np.float64),
        "hoigen_model": EMBEDDED_HAND_NAME,
        "tip_vertex_ids": [int(t) for t in h.tips],
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
