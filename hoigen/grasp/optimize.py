"""Batched grasp optimisation in numpy: many candidates per object at once, no learned weights.

Each candidate is a rigid placement (rotation as a 6-D two-column representation, Zhou et al. CVPR
2019; translation in metres) and finger angles ``a`` (15, 3) in the hand's joint space
(flexion, abduction, twist per joint; :class:`hoigen.hand.limits.JointSpace`, or a box around
MANO's axis-angles when that module is absent). The hand points (a subsample of the vertices plus
the fingertips) are skinned as :class:`hoigen.grasp.skin.HandSkin` skins them, placed by ``R p + T``
in the object's mesh frame, and their signed distances ``d`` (positive inside) come from the
object's :class:`hoigen.objects.sdf.SDFGrid`.

The energy of a candidate, minimised with Adam for a fixed number of steps::

    E = w_contact * sum_k |d(tip_k) - DEPTH|              five fingertips on the surface
      + w_palm    * |d(palm) - DEPTH|                      the palm centre on the surface
      + w_pen     * sum_v relu(d(v) - slack_v) / 10         hand vertices (every 3rd) kept out;
                                                           slack DEPTH on fingers, PEN_SLACK on the palm
      + w_limit   * violation(a)                            joint limits (squared excess, rad^2)
      + w_prior   * ||a - a_grasp||^2                       a mild pull toward half-closed fingers
      + w_self    * sum_{i,j other fingers} relu(2r - |s_i - s_j|)   finger-segment spheres apart
      + w_fc      * ||G n||^2                               force closure (DexGraspNet, Wang et al.
                                                           ICRA 2023): unit inward normals n_k at
                                                           the tips and the palm centre (central SDF
                                                           differences), G = [I; [x_k - c]x / L],
                                                           sum to zero force and torque (c, L: the
                                                           bounding box's centre and half diagonal)

``DEPTH`` (1 mm) asks for a slight press into the surface, which the rigid simulation needs to
produce friction. The normals come from central differences of the SDF grid, so the force-closure
term is differentiable in the contact positions. Candidates start with the palm facing a sampled
surface point (per-category preferences in :mod:`hoigen.grasp.synth`), a little away from it,
fingers a third of the way closed. Adam runs a fixed number of steps with no random numbers, and
the final angles are clamped into the joint limits. Default weights and step sizes are in
:class:`EnergyWeights` and :class:`OptimiseSettings`.

The energy and its gradient are computed in numpy by hand (:meth:`GraspProblem.energy_and_grad`):
the forward pass keeps its intermediates and the backward pass applies the chain rule through the
6-D rotation's Gram-Schmidt, the joint space's linear map, Rodrigues' formula, the kinematic chain
(one tree level at a time), linear blend skinning (one matrix product, or MANO's pose blend shapes),
the SDF's trilinear lookup (:meth:`hoigen.objects.sdf.SDFGrid.lookup_np`: values and their
closed-form gradient, also at the normals' probes) and every term. Sphere pairs whose bones are more
than ``2 r`` apart in every candidate (a triangle-inequality bound from each bone's middle sphere) are
skipped: their terms and gradients are exact zeros, so the result is bit for bit that over all pairs.
A step at 48 candidates is a few hundred small array operations, so their count sets its cost
(torch's autograd spent ~6 us an operation on dispatch and graph bookkeeping). Small 3x3 products
run component-major, ``(3, 3, ...)`` arrays multiplied and summed over whole rows; the few large
products go through ``torch.mm`` on the same memory (one torch thread, where numpy's OpenBLAS
would start a second thread). The skinning here is the optimiser's own; it reuses the precomputed
buffers of :class:`hoigen.grasp.skin.HandSkin` (levels, bones, skinning matrix, blend shapes), whose
torch forward serves the metrics. The implementation is dtype-generic (float32 in the optimiser,
float64 in the tests that check the gradient against finite differences).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from hoigen.grasp.skin import HandSkin
from hoigen.hand.keypoints import FINGERS, MANO_JOINT_NAMES
from hoigen.objects.sdf import SDFGrid

DEPTH = 0.001
PEN_SLACK = 0.0002  # palm vertices may sink this far before the penetration term acts (fingers: DEPTH)
SPHERE_R = 0.0075
SPHERE_T = (0.25, 0.6, 0.95)  # where along each bone a self-collision sphere sits
SPHERE_MARGIN = 1e-4  # slack of the bone-level bound that skips far sphere pairs (float32 error ~1e-8 m)
VERTEX_STRIDE = 3
TABLE_GAP = 0.002  # with a support plane, hand points are kept this far above it (the vertices between them too)
TERMS = ("contact", "palm", "penetration", "limit", "prior", "self_collision", "force_closure")


@dataclass
class EnergyWeights:
    contact: float = 20.0
    palm: float = 5.0
    penetration: float = 1000.0  # 300 let a third of the candidates end > 5 mm deep (exact check)
    limit: float = 10.0
    prior: float = 0.05
    self_collision: float = 20.0
    force_closure: float = 0.5


@dataclass
class OptimiseSettings:
    steps: int = 40  # the bench accepts as many grasps, as good, as with 50 or 80 (35: 5% fewer; see README)
    lr_rotation: float = 0.03
    lr_translation: float = 0.003
    lr_angles: float = 0.05
    weights: EnergyWeights = field(default_factory=EnergyWeights)


class _BoxSpace:
    """Stand-in for JointSpace: the angles *are* MANO's axis-angles (identity ``axes``), bounded by a
    box that holds the flat hand and the curled fist with 0.2 rad of play (numpy)."""

    def __init__(self, hand) -> None:
        fist = np.asarray(hand.curl_pose(1.0)).reshape(15, 3)
        self.lower = np.minimum(fist, 0.0) - 0.2
        self.upper = np.maximum(fist, 0.0) + 0.2
        self.axes = np.broadcast_to(np.eye(3), (15, 3, 3)).copy()
        self._fist = fist

    def to_pose(self, angles):
        return np.asarray(angles).reshape(*np.shape(angles)[:-2], 45)

    def from_pose(self, pose):
        return np.asarray(pose).reshape(*np.shape(pose)[:-1], 15, 3)

    def clamp(self, angles):
        return np.clip(angles, self.lower, self.upper)

    def violation(self, angles):
        excess = np.maximum(self.lower - angles, 0.0) + np.maximum(angles - self.upper, 0.0)
        return (excess**2).sum(axis=(-2, -1))

    def open_angles(self) -> np.ndarray:
        return np.zeros((15, 3))

    def fist_angles(self) -> np.ndarray:
        return self._fist.copy()


def joint_space(hand):
    """The hand's joint space: :class:`hoigen.hand.limits.JointSpace` when present, else a box."""
    try:
        from hoigen.hand.limits import JointSpace
    except ImportError:
        return _BoxSpace(hand)
    return JointSpace.from_hand(hand)


@functools.lru_cache(maxsize=8)
def _hand_points(hand) -> tuple[object, np.ndarray, int, HandSkin]:
    """The hand's joint space, the optimiser's vertex ids (fingertips, the palm centre, then every
    ``VERTEX_STRIDE``-th other vertex), the fingertip count and the ids' :class:`HandSkin` (whose
    buffers the numpy skinning reads): made once per hand, not per object (three MANO forwards,
    ~15 ms)."""
    tips = np.asarray(hand.tip_vertex_ids)
    sub = np.setdiff1d(np.arange(0, hand.num_vertices, VERTEX_STRIDE), tips)
    palm_centre, _, _ = hand.palm_frame()
    rest = hand.forward().vertices[0]
    palm_id = int(np.argmin(np.linalg.norm(rest - palm_centre, axis=1)))
    ids = np.concatenate([tips, [palm_id], sub])
    return joint_space(hand), ids, len(tips), HandSkin(hand, ids)


# -- component-major helpers: (3, 3, ...) matrices and (3, ...) vectors, the trailing axes broadcast --

try:  # np.einsum without its Python-level argument dispatch (~2.5 us of ~4 us a call on these small arrays)
    from numpy._core.multiarray import c_einsum as _einsum
except ImportError:  # pragma: no cover - other numpy versions
    _einsum = np.einsum

_NEXT, _PREV = np.array([1, 2, 0]), np.array([2, 0, 1])
_CROSS_MAP = np.zeros((9, 3))  # [r]x flattened row-major = _CROSS_MAP @ r
for _row, _col, _axis, _sign in ((0, 1, 2, -1), (0, 2, 1, 1), (1, 0, 2, 1), (1, 2, 0, -1), (2, 0, 1, -1), (2, 1, 0, 1)):
    _CROSS_MAP[3 * _row + _col, _axis] = _sign
_EYE9 = np.eye(3).reshape(9, 1)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A B: C[i, k] = sum_j A[i, j] B[j, k]."""
    return _einsum("ij...,jk...->ik...", a, b)


def _mtm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A^T B: C[i, k] = sum_j A[j, i] B[j, k]."""
    return _einsum("ji...,jk...->ik...", a, b)


def _mmt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A B^T: C[i, k] = sum_j A[i, j] B[k, j]."""
    return _einsum("ij...,kj...->ik...", a, b)


def _mv(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A v: u[i] = sum_j A[i, j] v[j]."""
    return _einsum("ij...,j...->i...", a, v)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a . b over the first axis."""
    return _einsum("i...,i...->...", a, b)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x b along the first axis."""
    return a.take(_NEXT, 0) * b.take(_PREV, 0) - a.take(_PREV, 0) * b.take(_NEXT, 0)


def _unit_backward(grad: np.ndarray, unit: np.ndarray, norm: np.ndarray, clamped: np.ndarray) -> np.ndarray:
    """The gradient of ``unit = x / max(|x|, 1e-8)`` (norms over the first axis) given ``norm`` = |x| and
    ``clamped`` = max(|x|, 1e-8)."""
    return (grad - unit * (_dot(unit, grad) * (norm > 1e-8))) / clamped


def _matmul(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """``a @ b`` for a larger product: ``torch.mm`` on numpy's memory (one torch thread; numpy's
    OpenBLAS would run such a product on two)."""
    a = a if isinstance(a, torch.Tensor) else torch.from_numpy(a)
    b = b if isinstance(b, torch.Tensor) else torch.from_numpy(b)
    return torch.mm(a, b).numpy()


def _rotation_forward(x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(6, B) two columns -> (3, 3, B) rotations (columns e1, e2, e1 x e2 by Gram-Schmidt) and what
    the backward pass needs."""
    a, b = x[:3], x[3:]
    na = np.sqrt(_dot(a, a))
    nac = np.maximum(na, 1e-8)
    e1 = a / nac
    dot = _dot(e1, b)
    bp = b - dot * e1
    nb = np.sqrt(_dot(bp, bp))
    nbc = np.maximum(nb, 1e-8)
    e2 = bp / nbc
    return np.stack([e1, e2, _cross(e1, e2)], axis=1), (b, e1, e2, dot, na, nac, nb, nbc)


def _rotation_backward(grad: np.ndarray, cache: tuple) -> np.ndarray:
    """(3, 3, B) gradient of the rotations -> (6, B) gradient of the two columns."""
    b, e1, e2, dot, na, nac, nb, nbc = cache
    de1 = grad[:, 0] + _cross(e2, grad[:, 2])
    de2 = grad[:, 1] + _cross(grad[:, 2], e1)
    dbp = _unit_backward(de2, e2, nb, nbc)
    ddot = -_dot(dbp, e1)
    de1 = de1 - dot * dbp + ddot * b
    return np.concatenate([_unit_backward(de1, e1, na, nac), dbp + ddot * e1])


def rotation_from_6d(x: np.ndarray) -> np.ndarray:
    """(B, 6) -> (B, 3, 3) rotation matrices; the columns come from Gram-Schmidt on two 3-vectors."""
    rot, _ = _rotation_forward(np.asarray(x).T)
    return np.ascontiguousarray(rot.transpose(2, 0, 1))


@functools.lru_cache(maxsize=4)
def _rodrigues_constants(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_CROSS_MAP``, ``_EYE9`` and ``_CROSS_MAP.T`` in ``dtype`` (made once per dtype)."""
    return _CROSS_MAP.astype(dtype), _EYE9.astype(dtype), _CROSS_MAP.T.astype(dtype)


def _rodrigues_forward(v: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(3, N) axis-angles -> (3, 3, N) rotations ``cos I + sin [r]x + (1 - cos) r r^T`` with the 1e-8
    guard of ``smplx.lbs.batch_rodrigues`` (as :func:`hoigen.grasp.skin.rodrigues`)."""
    cross_map, eye, _ = _rodrigues_constants(v.dtype)
    vp = v + 1e-8
    angle = np.sqrt(_dot(vp, vp))
    r = v / angle
    cos, sin = np.cos(angle), np.sin(angle)
    # (9, 3) @ (3, N): small enough that OpenBLAS runs it on one thread
    flat = (1 - cos) * (r[:, None] * r[None]).reshape(9, -1) + eye * cos + cross_map @ (sin * r)
    return flat.reshape(3, 3, -1), (v, vp, angle, r, cos, sin)


def _rodrigues_backward(grad: np.ndarray, cache: tuple) -> np.ndarray:
    """(3, 3, N) gradient of the rotations -> (3, N) gradient of the axis-angles."""
    v, vp, angle, r, cos, sin = cache
    flat = grad.reshape(9, -1)
    skew = _rodrigues_constants(v.dtype)[2] @ flat  # the gradient through [r]x
    sym = _mv(grad, r) + _mv(grad.transpose(1, 0, 2), r)  # (D + D^T) r
    d_cos = flat[0] + flat[4] + flat[8] - 0.5 * _dot(r, sym)
    dr = sin * skew + (1 - cos) * sym
    d_angle = cos * _dot(r, skew) - sin * d_cos - _dot(dr, v) / (angle * angle)
    return dr / angle + d_angle * vp / angle


class _Constants:
    """The problem's constant arrays in one dtype, laid out for :meth:`GraspProblem.energy_and_grad`."""

    def __init__(self, problem: GraspProblem, dtype: np.dtype) -> None:
        def cast(x) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(x, dtype=np.float64).astype(dtype))

        def tensor(x) -> torch.Tensor:
            return torch.from_numpy(cast(x))

        skin = problem.skin
        space = problem.space
        order = problem.pose_order  # level order -> hand_pose row
        self.axes = cast(np.asarray(space.axes)[order].transpose(1, 2, 0)[..., None])  # (3 k, 3 c, 15, 1)
        self.lower, self.upper = cast(space.lower), cast(space.upper)  # (15, 3)
        self.prior = cast(problem.prior)
        bone = skin.bone.double().numpy().T  # (3, 16), level order
        rest = skin.joints_rest_level.double().numpy().T
        self.bone = cast(bone[:, :, None])
        self.rest = cast(rest[None, :, :, None])  # (1, 3, 16, 1)
        self.root = cast(rest[:, :1, None])
        self.eye = cast(np.eye(3)[:, :, None])
        self.slack = cast(problem.slack)
        self.centre = cast(np.asarray(problem.centre).reshape(3, 1, 1))
        self.step = cast(problem.normal_step.T[:, None, :, None])  # (3, 1, 6, 1)
        self.sphere_map = tensor(problem.sphere_map_level)  # (S, 21)
        self.sphere_map_t = tensor(problem.sphere_map_level.T)
        self.incidence_t = cast(problem.pair_incidence.T)  # (pairs, S)
        if skin.has_blend:
            self.points = cast(skin.points.double().numpy()[:, :, None])  # (P, 3, 1)
            self.weights = tensor(skin.weights_level.double().numpy())
            self.weights_t = tensor(skin.weights_level.double().numpy().T)
            self.posedirs = tensor(skin.posedirs_level.double().numpy())
            self.posedirs_t = tensor(skin.posedirs_level.double().numpy().T)
        else:
            self.lbs = tensor(skin.lbs_matrix.double().numpy())  # (P, 64)
            self.lbs_t = tensor(skin.lbs_matrix.double().numpy().T)


class GraspProblem:
    """The energy of grasps of one object (its SDF grid) by one hand, and its gradient; see the module
    docstring."""

    def __init__(self, hand, sdf: SDFGrid, centre: np.ndarray, radius: float, support: float | None = None) -> None:
        self.hand = hand
        self.support = support  # the table's height (mesh frame, y up) or None: hand points below it penetrate
        self.space, self.ids, self.n_tips, self.skin = _hand_points(hand)
        self.sdf = sdf
        self.centre = np.asarray(centre, dtype=np.float64).reshape(3)
        self.radius = float(radius)
        tips = self.ids[: self.n_tips]
        self.owner = np.asarray(hand.vertex_fingers[self.ids])
        # finger vertices may press DEPTH into the surface like the tips; palm vertices only PEN_SLACK
        self.slack = np.where(self.owner[len(tips) + 1 :] >= 0, DEPTH, PEN_SLACK)
        # finger-segment spheres: three samples on each bone of the 16 MANO joints + 5 tips (the tips
        # are joints 16..20 of the stacked (joints16, tips) array)
        starts, ends, owners = [], [], []
        for k, finger in enumerate(FINGERS):
            js = [MANO_JOINT_NAMES.index(f"{finger}{i}") for i in (1, 2, 3)] + [16 + k]
            for a, b in zip(js[:-1], js[1:], strict=False):
                for _ in SPHERE_T:
                    starts.append(a)
                    ends.append(b)
                    owners.append(k)
        n = len(owners)
        t = np.asarray(SPHERE_T * (n // len(SPHERE_T)))
        # sphere centres as a linear map of the 21 points (16 joints + 5 tips); the pairs on different
        # fingers (each once) are differences of two centres
        self.sphere_map = np.zeros((n, 21))  # (S, 21)
        self.sphere_map[np.arange(n), starts] = 1.0 - t
        self.sphere_map[np.arange(n), ends] += t
        self.sphere_owner = np.asarray(owners)
        first, second = np.triu_indices(n, k=1)
        other = self.sphere_owner[first] != self.sphere_owner[second]
        self.pairs = np.stack([first[other], second[other]])  # (2, pairs): spheres on different fingers, once
        self.pair_incidence = np.zeros((n, self.pairs.shape[1]))  # (S, pairs): +1 first sphere, -1 second
        # a pair's two bones (spheres 3 i .. 3 i + 2 sit on bone i): a bone pair whose spheres are all
        # 2 r + SPHERE_MARGIN apart in every candidate has no pair in contact (see _self_collision)
        bone_a, bone_b = self.pairs // len(SPHERE_T)
        self.bone_pairs, self.pair_bone_pair = np.unique(np.stack([bone_a, bone_b]), axis=1, return_inverse=True)
        ts = np.asarray(SPHERE_T)
        self._sphere_spread = float(np.abs(ts - ts[len(ts) // 2]).max() / (ts[-1] - ts[0]))
        self.pair_incidence[self.pairs[0], np.arange(self.pairs.shape[1])] = 1.0
        self.pair_incidence[self.pairs[1], np.arange(self.pairs.shape[1])] = -1.0
        # the sphere map with the 16 joints in the skin's level order (the order the chain computes them in)
        self.sphere_map_level = self.sphere_map[:, np.concatenate([self.skin.order.numpy(), np.arange(16, 21)])]
        self.normal_step = np.concatenate([np.eye(3), -np.eye(3)]) * (0.5 * sdf.spacing)  # (6, 3)
        self.prior = 0.5 * (np.asarray(self.space.open_angles()) + np.asarray(self.space.fist_angles()))
        self.pose_order = self.skin._pose_order.numpy()  # level order -> hand_pose row (joints 1..15)
        sizes = [len(level) for level in self.skin.levels]
        self._levels = [(int(s), int(s + m)) for s, m in zip(np.cumsum([1, *sizes[:-1]]), sizes, strict=True)]
        self._level_parent = [None if p is None else p.numpy() for p in self.skin.level_parent]
        self._constants: dict[np.dtype, _Constants] = {}
        # the SDF lookup: (3, n) rows -> values (n,) and gradients (3, n) or None, in the rows' dtype: the
        # grid's float32 lookup (the tests put a float64 one here to compare with finite differences)
        self.lookup = sdf.lookup_np

    def _near_pairs(self, centres: np.ndarray, b: int) -> np.ndarray:
        """Indices (ascending) of the sphere pairs that may touch in some candidate, from (S, 3 B) sphere
        centres: a bone pair is skipped when, in every candidate, the distance of its middle spheres
        minus each bone's farthest sphere from its middle one is at least ``2 SPHERE_R + SPHERE_MARGIN``
        (a lower bound of every distance between their spheres: the triangle inequality)."""
        c = centres.reshape(-1, len(SPHERE_T), 3, b)  # (bones, spheres on a bone, 3, B)
        mid = len(SPHERE_T) // 2
        span = c[:, 0] - c[:, -1]
        spread = np.sqrt(_einsum("ncb,ncb->nb", span, span))
        spread *= self._sphere_spread  # (bones, B): the farthest sphere's distance from the middle one
        first, second = self.bone_pairs
        gap = c[:, mid].take(first, 0)
        gap -= c[:, mid].take(second, 0)
        lower = np.sqrt(_einsum("pcb,pcb->pb", gap, gap))
        lower -= spread.take(first, 0)
        lower -= spread.take(second, 0)
        near = (lower < 2 * SPHERE_R + SPHERE_MARGIN).any(1)
        return np.flatnonzero(near.take(self.pair_bone_pair))

    def constants(self, dtype) -> _Constants:
        """The constant arrays in ``dtype`` (made once per dtype)."""
        dtype = np.dtype(dtype)
        if dtype not in self._constants:
            self._constants[dtype] = _Constants(self, dtype)
        return self._constants[dtype]

    def to_pose(self, angles: np.ndarray) -> np.ndarray:
        """(B, 15, 3) joint-space angles -> (B, 45) MANO hand_pose, in the angles' dtype."""
        axes = np.asarray(self.space.axes).astype(angles.dtype)
        return (angles[..., None] * axes).sum(-2).reshape(len(angles), 45)

    def clamp(self, angles: np.ndarray) -> np.ndarray:
        """Angles clipped into the joint limits, in their dtype."""
        k = self.constants(angles.dtype)
        return np.minimum(np.maximum(angles, k.lower), k.upper)

    def energy(self, rot6: np.ndarray, transl: np.ndarray, angles: np.ndarray, w: EnergyWeights):
        """(total (B,), terms dict of (B,) arrays) for rotations (B, 6), translations (B, 3) and angles
        (B, 15, 3), all of one float dtype."""
        total, terms, _ = self._evaluate(rot6, transl, angles, w, False)
        return total, terms

    def energy_and_grad(self, rot6: np.ndarray, transl: np.ndarray, angles: np.ndarray, w: EnergyWeights):
        """(total, terms, (d total / d rot6, d total / d transl, d total / d angles)): :meth:`energy`
        and the gradient of the summed totals, by the chain rule (see the module docstring)."""
        return self._evaluate(rot6, transl, angles, w, True)

    def _evaluate(self, rot6, transl, angles, w: EnergyWeights, grad: bool):
        dt = rot6.dtype
        k = self.constants(dt)
        b = len(rot6)
        nt, nk = self.n_tips, self.n_tips + 1  # tips; tips and the palm centre (the contacts)
        # -- forward: rotation, joint space, Rodrigues (component-major: (3, ...) and (3, 3, ...)) ----
        rot, rot_cache = _rotation_forward(rot6.T)  # (3, 3, B)
        a_level = angles.transpose(2, 1, 0).take(self.pose_order, 1)  # (3, 15, B), joints in level order
        pose = (k.axes * a_level[:, None]).sum(0)  # (3, 15, B) MANO axis-angles
        local, rod_cache = _rodrigues_forward(pose.reshape(3, -1))
        local = local.reshape(3, 3, 15, b)
        # the chain one tree level at a time; m holds (G | S | J) per joint: global rotation G, the
        # skinning shift S = J - G rest and the joint J, (3, 5, 16, B) in level order
        m = np.empty((3, 5, 16, b), dt)
        g, s_, j = m[:, :3], m[:, 3], m[:, 4]
        g[:, :, 0] = k.eye
        j[:, 0] = k.root[:, 0]
        first = self._levels[0]
        g[:, :, first[0] : first[1]] = local[:, :, first[0] - 1 : first[1] - 1]
        j[:, first[0] : first[1]] = k.root + k.bone[:, first[0] : first[1]]
        parents = []
        for (s0, s1), (p0, p1), par in zip(self._levels[1:], self._levels, self._level_parent[1:], strict=False):
            gp, jp = g[:, :, p0:p1], j[:, p0:p1]
            if par is not None:
                gp, jp = gp[:, :, par], jp[:, par]
            parents.append(gp)
            g[:, :, s0:s1] = _mm(gp, local[:, :, s0 - 1 : s1 - 1])
            j[:, s0:s1] = jp + _mv(gp, k.bone[:, s0:s1])
        s_[...] = j - _mv(g, k.rest[0])
        # the rigid placement folded into the transforms: (3, B, 16, 5), each joint's (R G | R S + T | R J + T)
        placed = _einsum("ijb,jkcb->ibck", rot, m)
        placed[..., 3:] += transl.T[:, :, None, None]
        n_pts = len(self.ids)
        if blend := self.skin.has_blend:
            feature = (local - k.eye[..., None]).transpose(3, 2, 0, 1).reshape(b, -1)  # (B, 15 * 9)
            posed = k.points + _matmul(feature, k.posedirs).reshape(b, n_pts, 3).transpose(1, 2, 0)  # (P, 3, B)
            tm = _matmul(k.weights, placed[..., :4].transpose(2, 0, 3, 1).reshape(16, -1)).reshape(n_pts, 3, 4, b)
            pts = ((tm[:, :, :3] * posed[:, None]).sum(2) + tm[:, :, 3]).transpose(1, 2, 0)  # (3, B, P)
        else:  # every point a fixed linear function of the transforms: one product
            a_t = placed[..., :4].reshape(3 * b, 64)
            pts = _matmul(a_t, k.lbs_t).reshape(3, b, n_pts)
        joints = placed[..., 4]  # (3, B, 16) placed joints, level order
        # -- the grid lookup of the hand points and the normals' central-difference probes ------------
        contacts = pts[:, :, :nk]  # (3, B, K)
        rows = np.empty((3, b, n_pts + 6 * nk), dt)  # the points, then the probes (3, B, 6, K)
        rows[:, :, :n_pts] = pts
        np.add(contacts[:, :, None], k.step, out=rows[:, :, n_pts:].reshape(3, b, 6, nk))
        rows = rows.reshape(3, -1)
        value, value_grad = self.lookup(rows, grad)
        value = value.reshape(b, -1)
        d_tips, d_palm, d_rest = value[:, :nt], value[:, nt], value[:, nk:n_pts]
        probed = value[:, n_pts:].reshape(b, 6, nk)
        diff = (probed[:, :3] - probed[:, 3:]).transpose(1, 0, 2)  # (3, B, K)
        norm = np.sqrt(_dot(diff, diff))
        norm_c = np.maximum(norm, 1e-8)
        inward = diff / norm_c
        arm = (contacts - k.centre) / self.radius
        force = inward.sum(2)
        torque = _cross(arm, inward).sum(2)
        lo_excess = np.maximum(k.lower - angles, 0)
        hi_excess = np.maximum(angles - k.upper, 0)
        excess = lo_excess + hi_excess
        off_prior = angles - k.prior
        key = np.concatenate([joints.transpose(2, 0, 1), pts[:, :, :nt].transpose(2, 0, 1)]).reshape(21, -1)
        centres = _matmul(k.sphere_map, key)  # (S, 3 B) sphere centres
        near = self._near_pairs(centres, b)  # the pairs that may touch, ascending (their terms: exact zeros)
        gap = centres.take(self.pairs[0].take(near), 0)
        gap -= centres.take(self.pairs[1].take(near), 0)
        gap = gap.reshape(-1, 3, b)  # (near pairs, 3, B)
        sq = _einsum("pcb,pcb->pb", gap, gap)
        dist = np.sqrt(np.maximum(sq, 1e-12))
        reach = 2 * SPHERE_R - dist
        tip_off, palm_off, pen_off = d_tips - DEPTH, d_palm - DEPTH, d_rest - k.slack
        terms = {
            "contact": np.abs(tip_off).sum(1),
            "palm": np.abs(palm_off),
            "penetration": np.maximum(pen_off, 0).sum(1) / 10,
            "limit": (excess * excess).sum((1, 2)),
            "prior": (off_prior * off_prior).sum((1, 2)),
            "self_collision": np.maximum(reach, 0).sum(0),
            "force_closure": (force * force).sum(0) + (torque * torque).sum(0),
        }
        if self.support is not None:  # the table is solid too (hoigen grasp --table)
            under = self.support + TABLE_GAP - pts[1]  # (B, P)
            terms["penetration"] = terms["penetration"] + np.maximum(under, 0).sum(1) / 10
        weight = {name: dt.type(getattr(w, name)) for name in TERMS}
        total = weight[TERMS[0]] * terms[TERMS[0]]  # the contact term, >= +0: what sum()'s 0 + ... gives
        for name in TERMS[1:]:
            total += weight[name] * terms[name]
        if not grad:
            return total, terms, None
        # -- backward: the terms -> the looked-up values and the points ---------------------------------
        d_value = np.empty_like(value)
        d_value[:, :nt] = weight["contact"] * np.sign(tip_off)
        d_value[:, nt] = weight["palm"] * np.sign(palm_off)
        d_value[:, nk:n_pts] = (pen_off > 0) * (weight["penetration"] / 10)  # d > slack exactly when d - slack > 0
        d_force = (2 * weight["force_closure"]) * force
        d_torque = (2 * weight["force_closure"]) * torque
        d_inward = d_force[:, :, None] + _cross(d_torque[:, :, None], arm)
        d_diff = _unit_backward(d_inward, inward, norm, norm_c).transpose(1, 0, 2)  # (B, 3, K)
        d_probed = d_value[:, n_pts:].reshape(b, 6, nk)
        d_probed[:, :3] = d_diff
        d_probed[:, 3:] = -d_diff
        d_all = value_grad.reshape(3, b, -1) * d_value  # (3, B, P + 6K)
        d_pts = d_all[:, :, :n_pts]
        d_probes = d_all[:, :, n_pts:].reshape(3, b, 6, nk)
        d_sum = d_probes[:, :, 0] + d_probes[:, :, 1]  # the sum over the six probes, in order (as .sum(2))
        for i in range(2, 6):
            d_sum += d_probes[:, :, i]
        d_pts[:, :, :nk] += d_sum
        d_pts[:, :, :nk] += _cross(inward, d_torque[:, :, None]) / self.radius  # through the arms
        if self.support is not None:
            d_pts[1] -= (under > 0) * (weight["penetration"] / 10)
        # self-collision: only the pairs that touch in some candidate have a gradient
        touch = np.flatnonzero((reach > 0).any(1))
        d_joints = np.zeros((3, b, 16), dt)
        if len(touch):
            coef = (reach.take(touch, 0) > 0) * (-weight["self_collision"]) / dist.take(touch, 0)
            coef *= sq.take(touch, 0) > 1e-12
            pulled = coef[:, None] * gap.take(touch, 0)
            d_centres = _matmul(k.incidence_t.take(near.take(touch), 0).T, pulled.reshape(len(touch), -1))
            d_key = _matmul(k.sphere_map_t, d_centres).reshape(21, 3, b)
            d_joints += d_key[:16].transpose(1, 2, 0)
            d_pts[:, :, :nt] += d_key[16:].transpose(1, 2, 0)
        # -- skinning -> the placed transforms ----------------------------------------------------------
        d_placed = np.empty_like(placed)
        d_local = np.empty_like(local)
        if blend:
            dp = d_pts.transpose(2, 0, 1)  # (P, 3, B)
            d_tm = np.empty_like(tm)
            d_tm[:, :, :3] = dp[:, :, None] * posed[:, None]
            d_tm[:, :, 3] = dp
            d_placed[..., :4] = _matmul(k.weights_t, d_tm.reshape(n_pts, -1)).reshape(16, 3, 4, b).transpose(1, 3, 0, 2)
            d_posed = (tm[:, :, :3] * dp[:, :, None]).sum(1)  # (P, 3, B)
            d_feature = _matmul(np.ascontiguousarray(d_posed.transpose(2, 0, 1)).reshape(b, -1), k.posedirs_t)
        else:
            d_placed[..., :4] = _matmul(d_pts.reshape(3 * b, n_pts), k.lbs).reshape(3, b, 16, 4)
        d_placed[..., 4] = d_joints
        d_transl = d_placed[..., 3:].sum((2, 3))  # (3, B)
        d_rot = _einsum("ibck,lkcb->ilb", d_placed, m)  # (3, 3, B)
        d_m = _einsum("ilb,ibck->lkcb", rot, d_placed)  # (3, 5, 16, B)
        d_g, d_s, d_j = d_m[:, :3], d_m[:, 3], d_m[:, 4]
        d_j += d_s
        d_g -= d_s[:, None] * k.rest
        # -- the chain backward, the last level first ---------------------------------------------------
        for (s0, s1), (p0, p1), par, gp in reversed(
            list(zip(self._levels[1:], self._levels, self._level_parent[1:], parents, strict=False))
        ):
            dg, dj = d_g[:, :, s0:s1], d_j[:, s0:s1]
            d_local[:, :, s0 - 1 : s1 - 1] = _mtm(gp, dg)
            d_gp = _mmt(dg, local[:, :, s0 - 1 : s1 - 1]) + dj[:, None] * k.bone[None, :, s0:s1]
            if par is None:
                d_g[:, :, p0:p1] += d_gp
                d_j[:, p0:p1] += dj
            else:
                np.add.at(d_g[:, :, p0:p1], (slice(None), slice(None), par), d_gp)
                np.add.at(d_j[:, p0:p1], (slice(None), par), dj)
        d_local[:, :, first[0] - 1 : first[1] - 1] = d_g[:, :, first[0] : first[1]]
        if blend:
            d_local += d_feature.reshape(b, 15, 3, 3).transpose(2, 3, 1, 0)
        d_pose = _rodrigues_backward(d_local.reshape(3, 3, -1), rod_cache).reshape(3, 15, b)
        d_angles = np.empty_like(angles)
        d_angles.transpose(2, 1, 0)[:, self.pose_order] = (k.axes * d_pose[None]).sum(1)
        d_angles += (2 * weight["limit"]) * (hi_excess - lo_excess) + (2 * weight["prior"]) * off_prior
        d_rot6 = _rotation_backward(d_rot, rot_cache).T
        return total, terms, (d_rot6, d_transl.T, d_angles)


@dataclass
class Candidates:
    """Optimised candidates: rotations (B, 3, 3), translations (B, 3), hand_pose (B, 45), energy (B,)."""

    rotation: np.ndarray
    translation: np.ndarray
    hand_pose: np.ndarray
    energy: np.ndarray
    history: list[float]


def optimise(
    problem: GraspProblem,
    rotation: np.ndarray,
    translation: np.ndarray,
    angles: np.ndarray,
    settings: OptimiseSettings | None = None,
) -> Candidates:
    """Run Adam from the initial placements (B, 3, 3), (B, 3) and angles (B, 15, 3) in float32 (one
    torch thread for the few products that torch runs).

    The final angles are clamped into the joint limits (the limit term keeps the excess small)."""
    with one_thread():
        return _optimise(problem, rotation, translation, angles, settings or OptimiseSettings())


class _Adam:
    """Plain Adam (Kingma & Ba 2015; betas 0.9/0.999, eps 1e-8) on (array, lr) pairs, in numpy.

    The parameters live in one flat buffer (``params`` are views of it), so that an update is a
    dozen array operations for all of them: ``p -= lr * (m / c1) / (sqrt(v / c2) + eps)``."""

    def __init__(self, params: list[tuple[np.ndarray, float]], b1: float = 0.9, b2: float = 0.999) -> None:
        self.b1, self.b2, self.t = b1, b2, 0
        self.flat = np.concatenate([np.ravel(p) for p, _ in params])
        self.lr = np.concatenate([np.full(np.size(p), lr, dtype=self.flat.dtype) for p, lr in params])
        self.m = np.zeros_like(self.flat)
        self.v = np.zeros_like(self.flat)
        self._grad = np.empty_like(self.flat)
        bounds = np.cumsum([0] + [np.size(p) for p, _ in params])
        spans = [(i, j, np.shape(p)) for (p, _), i, j in zip(params, bounds[:-1], bounds[1:], strict=True)]
        self.params = [self.flat[i:j].reshape(shape) for i, j, shape in spans]
        self._grads = [self._grad[i:j].reshape(shape) for i, j, shape in spans]

    def step(self, grads) -> None:
        """One update of every parameter (in place: ``params`` keep pointing at the new values)."""
        for out, g in zip(self._grads, grads, strict=True):
            out[...] = g
        g = self._grad
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        self.m *= self.b1
        self.m += (1 - self.b1) * g
        self.v *= self.b2
        self.v += (1 - self.b2) * (g * g)
        step = self.m / c1
        step *= self.lr
        denom = np.sqrt(self.v / c2)
        denom += 1e-8
        step /= denom
        self.flat -= step


@contextlib.contextmanager
def one_thread():
    """One torch thread: on a shared 2-core machine, OpenMP threads spin-wait and slow down 10-100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _optimise(problem: GraspProblem, rotation, translation, angles, s: OptimiseSettings) -> Candidates:
    f32 = np.float32
    rot6 = np.asarray(rotation)[:, :, :2].transpose(0, 2, 1).reshape(-1, 6).astype(f32)
    adam = _Adam(
        [
            (rot6, s.lr_rotation),
            (np.asarray(translation, f32), s.lr_translation),
            (np.asarray(angles, f32), s.lr_angles),
        ]
    )
    rot6, t, a = adam.params
    history = []
    for _ in range(s.steps):
        total, _, grads = problem.energy_and_grad(rot6, t, a, s.weights)
        adam.step(grads)
        history.append(float(total.mean()))
    a = problem.clamp(a)  # the result lies within the joint limits exactly
    total, _ = problem.energy(rot6, t, a, s.weights)
    return Candidates(
        rotation=rotation_from_6d(rot6).astype(np.float64),
        translation=t.astype(np.float64),
        hand_pose=problem.to_pose(a).astype(np.float64),
        energy=total.astype(np.float64),
        history=history,
    )
