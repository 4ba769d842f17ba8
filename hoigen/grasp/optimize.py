"""Batched grasp optimisation in torch: many candidates per object at once, no learned weights.

Each candidate is a rigid placement (rotation as a 6-D two-column representation, Zhou et al. CVPR
2019; translation in metres) and finger angles ``a`` (15, 3) in the hand's joint space
(flexion, abduction, twist per joint; :class:`hoigen.hand.limits.JointSpace`, or a box around
MANO's axis-angles when that module is absent). The hand points are skinned with
:class:`hoigen.grasp.skin.HandSkin` (a subsample of the vertices plus the fingertips), placed by
``R p + T`` in the object's mesh frame, and their signed distances ``d`` (positive inside) come
from the object's :class:`hoigen.objects.sdf.SDFGrid`.

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
fingers a third of the way closed. Adam runs a fixed number of steps with no random numbers (one
torch thread), and the final angles are clamped into the joint limits. Default weights and step
sizes are in :class:`EnergyWeights` and :class:`OptimiseSettings`.

A step at 48 candidates is a few hundred small torch operations, so their count and memory layout
set its cost: the hand points are skinned axis-major, (3, B, P), straight into the grid lookup
(:meth:`hoigen.objects.sdf.SDFGrid.query_axis_major`), sums over the three axes add whole rows, and
the joint space's constants are converted once (:func:`hoigen.hand.limits.torch_constant`). Every
such change is bit-identical to the point-major formulation (``tests/test_grasp_speed.py`` compares
energies and gradients bit for bit).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from hoigen.grasp.skin import HandSkin
from hoigen.hand.keypoints import FINGERS, MANO_JOINT_NAMES
from hoigen.hand.limits import torch_constant
from hoigen.objects.sdf import SDFGrid

DEPTH = 0.001
PEN_SLACK = 0.0002  # palm vertices may sink this far before the penetration term acts (fingers: DEPTH)
SPHERE_R = 0.0075
SPHERE_T = (0.25, 0.6, 0.95)  # where along each bone a self-collision sphere sits
VERTEX_STRIDE = 3
TABLE_GAP = 0.002  # with a support plane, hand points are kept this far above it (the vertices between them too)


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
    """Stand-in for JointSpace: the angles *are* MANO's axis-angles, bounded by a box that holds the
    flat hand and the curled fist with 0.2 rad of play."""

    def __init__(self, hand) -> None:
        fist = np.asarray(hand.curl_pose(1.0)).reshape(15, 3)
        self.lower = np.minimum(fist, 0.0) - 0.2
        self.upper = np.maximum(fist, 0.0) + 0.2
        self._fist = fist

    def to_pose(self, angles):
        return angles.reshape(*angles.shape[:-2], 45)

    def from_pose(self, pose):
        return pose.reshape(*pose.shape[:-1], 15, 3)

    def clamp(self, angles):
        lo, hi = torch_constant(self, "lower", angles), torch_constant(self, "upper", angles)
        return torch.maximum(torch.minimum(angles, hi), lo)

    def violation(self, angles):
        lo, hi = torch_constant(self, "lower", angles), torch_constant(self, "upper", angles)
        return ((torch.relu(lo - angles) + torch.relu(angles - hi)) ** 2).sum(dim=(-2, -1))

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


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(B, 6) -> (B, 3, 3) rotation matrices; the columns come from Gram-Schmidt on two 3-vectors."""
    a, b = x.split(3, dim=1)  # one SplitBackward, not two zero-filled SliceBackwards
    e1 = a / a.norm(dim=1, keepdim=True).clamp(min=1e-8)
    b = b - (e1 * b).sum(1, keepdim=True) * e1
    e2 = b / b.norm(dim=1, keepdim=True).clamp(min=1e-8)
    return torch.stack([e1, e2, torch.cross(e1, e2, dim=1)], dim=2)


class GraspProblem:
    """The energy of grasps of one object (its SDF grid) by one hand; see the module docstring."""

    def __init__(self, hand, sdf: SDFGrid, centre: np.ndarray, radius: float, support: float | None = None) -> None:
        self.hand = hand
        self.support = support  # the table's height (mesh frame, y up) or None: hand points below it penetrate
        self.space = joint_space(hand)
        self.sdf = sdf
        self.centre = torch.as_tensor(np.asarray(centre), dtype=torch.float32)
        self.radius = float(radius)
        fingers = hand.vertex_fingers
        tips = np.asarray(hand.tip_vertex_ids)
        sub = np.setdiff1d(np.arange(0, hand.num_vertices, VERTEX_STRIDE), tips)
        palm_centre, _, _ = hand.palm_frame()
        rest = hand.forward().vertices[0]
        palm_id = int(np.argmin(np.linalg.norm(rest - palm_centre, axis=1)))
        self.ids = np.concatenate([tips, [palm_id], sub])
        self.skin = HandSkin(hand, self.ids)
        self.n_tips = len(tips)
        self.owner = torch.as_tensor(fingers[self.ids])
        # finger vertices may press DEPTH into the surface like the tips; palm vertices only PEN_SLACK
        self.slack = torch.where(self.owner[len(tips) + 1 :] >= 0, DEPTH, PEN_SLACK).to(torch.float32)
        # finger-segment spheres: 16 MANO joints + 5 tips, three samples per bone
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
        self._sphere_a = torch.as_tensor(starts)
        self._sphere_b = torch.as_tensor(ends)
        self._sphere_t = torch.as_tensor(SPHERE_T * (len(starts) // len(SPHERE_T)), dtype=torch.float32)[:, None]
        self._sphere_owner = torch.as_tensor(owners)
        # sphere centres and the differences of every pair on different fingers (each once) as linear
        # maps of the 21 points (16 joints + 5 tips): one matrix product instead of gathers
        n = len(owners)
        place = torch.zeros(n, 21)
        place[torch.arange(n), self._sphere_a] = 1.0 - self._sphere_t[:, 0]
        place[torch.arange(n), self._sphere_b] += self._sphere_t[:, 0]
        self._sphere_map = place  # (S, 21)
        first, second = torch.triu_indices(n, n, offset=1)
        other = self._sphere_owner[first] != self._sphere_owner[second]
        self._pair_map = place[first[other]] - place[second[other]]  # (pairs, 21)
        self._normal_step = torch.cat([torch.eye(3), -torch.eye(3)]) * (0.5 * sdf.spacing)  # (6, 3)
        self._normal_step_t = self._normal_step.t()[:, None, None, :].contiguous()  # (3, 1, 1, 6), axis-major
        self.prior = torch.as_tensor(
            0.5 * (np.asarray(self.space.open_angles()) + np.asarray(self.space.fist_angles())), dtype=torch.float32
        )

    def spheres(self, joints16: torch.Tensor, tips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sphere centres (B, S, 3) along each finger's bones and the finger (S,) of each."""
        return self._sphere_map @ torch.cat([joints16, tips], dim=1), self._sphere_owner

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        """Unit inward normals (B, K, 3) at ``points`` by central differences of the SDF (differentiable)."""
        d = self.sdf.query(points[..., None, :] + self._normal_step.to(points.dtype))  # (B, K, 6)
        grad = d[..., :3] - d[..., 3:]
        return grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8)

    def energy(self, rot6: torch.Tensor, transl: torch.Tensor, angles: torch.Tensor, w: EnergyWeights):
        """(total (B,), terms dict of (B,) tensors).

        The hand points are skinned axis-major, (3, B, P), the layout of the grid lookup, so that
        neither they nor their gradients are transposed (see :meth:`HandSkin.axis_major`)."""
        pts, joints16 = self.skin.axis_major(self.space.to_pose(angles), rotation_from_6d(rot6), transl)  # (3, B, P)
        b, n = pts.shape[1], pts.shape[2]
        contacts = pts[:, :, : self.n_tips + 1]  # fingertips and the palm centre, (3, B, K)
        # one grid lookup for the hand points and the central-difference probes of the contact normals
        probes = (contacts[..., None] + self._normal_step_t).reshape(3, b, -1)
        both = self.sdf.query_axis_major(torch.cat([pts, probes], dim=2))  # (B, P + 6K)
        d_tips, d_palm, d_rest, probed = both.split([self.n_tips, 1, n - self.n_tips - 1, both.shape[1] - n], dim=1)
        ahead, behind = probed.reshape(b, -1, 6).split(3, dim=-1)
        grad = ahead - behind
        inward = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        tips = pts[:, :, : self.n_tips]
        terms = {
            "contact": (d_tips - DEPTH).abs().sum(1),
            "palm": (d_palm[:, 0] - DEPTH).abs(),
            "penetration": torch.relu(d_rest - self.slack).sum(1) / 10.0,
            "limit": self.space.violation(angles),
            "prior": ((angles - self.prior) ** 2).sum(dim=(1, 2)),
        }
        # one (pairs, 21) @ (21, 3*B); columns axis-major, so that the sum over the axes adds whole rows
        key = torch.cat([joints16.permute(1, 2, 0), tips.permute(2, 0, 1)]).reshape(21, 3 * b)
        gap = (self._pair_map @ key).view(-1, 3, b)
        dist = (gap * gap).sum(1).clamp(min=1e-12).sqrt()  # (pairs, B) sphere distances
        terms["self_collision"] = torch.relu(2 * SPHERE_R - dist).sum(0)
        arm = (contacts.permute(1, 2, 0) - self.centre) / self.radius
        force = inward.sum(1)
        torque = torch.cross(arm, inward, dim=-1).sum(1)
        terms["force_closure"] = (force**2).sum(1) + (torque**2).sum(1)
        if self.support is not None:  # the table is solid too (hoigen grasp --table); (P, B) rows: the
            # sum over the points runs down the rows, in the order the point-major layout summed them
            below = torch.relu(self.support + TABLE_GAP - pts[1].t().contiguous()).sum(0) / 10
            terms["penetration"] = terms["penetration"] + below
        total = sum(getattr(w, k) * v for k, v in terms.items())
        return total, terms


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
    """Run Adam from the initial placements (B, 3, 3), (B, 3) and angles (B, 15, 3) (one torch thread).

    The final angles are clamped into the joint limits (the limit term keeps the excess small)."""
    with one_thread():
        return _optimise(problem, rotation, translation, angles, settings or OptimiseSettings())


class _Adam:
    """Plain Adam (Kingma & Ba 2015; betas 0.9/0.999, eps 1e-8) on (tensor, lr) pairs.

    ``torch.optim.Adam`` would do the same, but constructing it imports ``torch._dynamo`` (several
    seconds per process on these CPUs)."""

    def __init__(self, params: list[tuple[torch.Tensor, float]], b1: float = 0.9, b2: float = 0.999) -> None:
        self.params = params
        self.b1, self.b2, self.t = b1, b2, 0
        self.m = [torch.zeros_like(p) for p, _ in params]
        self.v = [torch.zeros_like(p) for p, _ in params]
        self._tensors = [p for p, _ in params]
        self._lrs = [lr for _, lr in params]

    @torch.no_grad()
    def step(self, grads) -> None:
        """One update of every parameter; ``torch._foreach_*`` ops (one call per op for all the
        tensors), the same arithmetic as ``p -= lr * (m / c1) / (sqrt(v / c2) + eps)`` per tensor."""
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        grads = list(grads)
        torch._foreach_mul_(self.m, self.b1)
        torch._foreach_add_(self.m, grads, alpha=1 - self.b1)
        torch._foreach_mul_(self.v, self.b2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - self.b2)
        step = torch._foreach_div(self.m, c1)
        torch._foreach_mul_(step, self._lrs)
        denom = torch._foreach_div(self.v, c2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, 1e-8)
        torch._foreach_div_(step, denom)
        torch._foreach_sub_(self._tensors, step)


@contextlib.contextmanager
def one_thread():
    """One torch thread: on a shared 2-core machine, OpenMP threads spin-wait and slow down 10-100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _optimise(problem, rotation, translation, angles, s: OptimiseSettings) -> Candidates:
    rot6 = torch.as_tensor(np.asarray(rotation)[:, :, :2].transpose(0, 2, 1).reshape(-1, 6), dtype=torch.float32)
    rot6.requires_grad_(True)
    t = torch.as_tensor(translation, dtype=torch.float32).clone().requires_grad_(True)
    a = torch.as_tensor(angles, dtype=torch.float32).clone().requires_grad_(True)
    adam = _Adam([(rot6, s.lr_rotation), (t, s.lr_translation), (a, s.lr_angles)])
    history = []
    for _ in range(s.steps):
        total, _ = problem.energy(rot6, t, a, s.weights)
        grads = torch.autograd.grad(total.sum(), [rot6, t, a])
        adam.step(grads)
        history.append(float(total.detach().mean()))
    with torch.no_grad():
        a = problem.space.clamp(a)  # the result lies within the joint limits exactly
        total, _ = problem.energy(rot6, t, a, s.weights)
        rot = rotation_from_6d(rot6)
        pose = problem.space.to_pose(a)
    return Candidates(
        rotation=rot.numpy().astype(np.float64),
        translation=t.detach().numpy().astype(np.float64),
        hand_pose=pose.detach().numpy().astype(np.float64),
        energy=total.numpy().astype(np.float64),
        history=history,
    )
