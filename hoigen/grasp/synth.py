"""Grasp synthesis without learned weights: sample, optimise, measure, filter.

For one object, ``candidates`` starting placements are drawn at once: a surface point ``p`` with
outward normal ``n`` is sampled with per-category preferences (:func:`surface_preferences`: mug
body or handle, bottle body below the neck, bowl rim and outer wall, the sides of a laptop's base,
camera body, can side; uniform for unknown categories), the palm is turned to face the surface
(palm normal = ``-n``) with the fingers along a tangent across the object's long axis (y for the
revolved categories, else the bounding box's longest side) so they wrap around it, turned by a
random angle, pointing either way along it unless the category names a way (``FINGERS_TOWARD``:
under a laptop's base), ``PALM_GAP`` off the surface, fingers half open. The whole batch is then
optimised together (:mod:`hoigen.grasp.optimize`, energy documented there). The candidates are
ranked by energy and measured with :class:`hoigen.grasp.metrics.GraspEvaluator` (exact
penetration, contacts, pybullet displacement) in that order until enough pass the
:class:`~hoigen.grasp.metrics.GraspFilter`; the intersection volume (no filter criterion) is then
measured for the accepted grasps in one batch. Only accepted grasps are returned. When a batch
yields too few, another round of candidates is drawn (up to ``max_rounds`` rounds); if the quota is
still not met, fewer grasps come back and the report says so. Every measured candidate is counted:
the report carries ``candidates``, ``evaluated``, ``accepted``, ``rounds`` and the rejection reasons.

Randomness: a ``numpy.random.Generator`` drives the sampling (round ``r >= 1`` draws from
``round_rng(r)`` when given, so a caller can seed each round by the object and the round number);
the optimisation itself is deterministic (no random numbers), so the same generators give the
same grasps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trimesh

from hoigen.errors import HoigenError
from hoigen.grasp.metrics import GraspEvaluator, GraspFilter
from hoigen.grasp.optimize import GraspProblem, OptimiseSettings, one_thread, optimise
from hoigen.grasp.trajectory import HandPose
from hoigen.objects.geometry import sample_surface

TIPS_21 = (4, 8, 12, 16, 20)  # thumb, index, middle, ring, pinky tips in the common 21 order
PALM_GAP = 0.012
START_CURL = 0.35  # initial finger angles: this share of the way from open to fist
# categories whose fingers should point one way along the tangent (mesh frame, y up): a laptop is
# lifted by the side of its base with the fingers underneath (over three procedural laptops, 8 of 144
# candidates were accepted when the palm sat anywhere near the edges, fingers up or down; 25-29 now)
FINGERS_TOWARD = {"laptop": (0.0, -1.0, 0.0)}
# with a support plane: surface points lower than this above it are rarely picked (the hand's half width)
SUPPORT_REACH = 0.04
SIGNED_BLOCK = 8  # candidates whose exact signed distances are measured in one call (its overhead is per call)
SUPPORT_TOL = 1e-6  # metres: an accepted grasp's lowest vertex is at least this far above the plane (float32 skinning)


@dataclass
class GraspResult:
    pose: HandPose  # in the object's mesh frame
    approach_dir: np.ndarray  # outward surface normal at the contact: the start pose lies along it
    metrics: dict


@dataclass
class SynthesisReport:
    """What happened to one object's candidates (kept in the metrics and the run's statistics)."""

    candidates: int = 0
    evaluated: int = 0
    accepted: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    rounds: int = 0
    wanted: int = 0

    @property
    def shortfall(self) -> int:
        return max(0, self.wanted - self.accepted)

    @property
    def rejected(self) -> int:
        return self.evaluated - self.accepted


def align_frames(src_a: np.ndarray, src_b: np.ndarray, dst_a: np.ndarray, dst_b: np.ndarray) -> np.ndarray:
    """The rotation taking direction ``src_a`` to ``dst_a`` and (the part of) ``src_b`` to ``dst_b``.

    Directions may carry leading batch dimensions (``(..., 3)``); so does the result (``(..., 3, 3)``)."""

    def basis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        e1 = a / np.linalg.norm(a, axis=-1, keepdims=True)
        e2 = b - e1 * (b * e1).sum(axis=-1, keepdims=True)
        e2 = e2 / np.linalg.norm(e2, axis=-1, keepdims=True)
        return np.stack([e1, e2, np.cross(e1, e2)], axis=-1)

    src = basis(np.asarray(src_a, dtype=np.float64), np.asarray(src_b, dtype=np.float64))
    return basis(np.asarray(dst_a, dtype=np.float64), np.asarray(dst_b, dtype=np.float64)) @ np.swapaxes(src, -1, -2)


def tangent_direction(
    normal: np.ndarray, rng: np.random.Generator, up=(0.0, 1.0, 0.0), toward: np.ndarray | None = None
) -> np.ndarray:
    """A tangent at a surface point across ``up`` (fingers wrap around an upright body), turned by a
    random angle (+-0.5 rad, either way round, or the way that points along ``toward``) about the normal.

    ``normal`` may be a batch (n, 3): one tangent per row, two uniform draws per row in row order."""
    n = np.asarray(normal, dtype=np.float64)
    rows = n.reshape(-1, 3)
    t = np.cross(rows, np.asarray(up, dtype=np.float64))
    flat = np.linalg.norm(t, axis=1) < 1e-3  # the normal runs along ``up``: any axis across it will do
    if flat.any():
        t[flat] = np.cross(rows[flat], np.eye(3)[np.argmin(np.abs(rows[flat]), axis=1)])
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    b = np.cross(rows, t)
    draws = rng.random((len(rows), 2))
    angle = (draws[:, 0] - 0.5) + np.where(draws[:, 1] < 0.5, np.pi, 0.0)
    out = np.cos(angle)[:, None] * t + np.sin(angle)[:, None] * b
    if toward is not None:
        out = np.where((out @ np.asarray(toward, dtype=np.float64) < 0)[:, None], -out, out)
    return out.reshape(n.shape)


def surface_preferences(category: str, points: np.ndarray, normals: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sampling weights (n,) of surface points for a category (mesh frame: y up, NOCS-like)."""
    lo, hi = np.asarray(bounds)
    size = np.maximum(hi - lo, 1e-9)
    rel = (points - lo) / size  # 0..1 inside the bounding box
    side = 1.0 - 0.9 * np.abs(normals[:, 1])
    if category == "mug":
        handle = rel[:, 0] > 0.8  # procedural mugs carry the handle on +x
        return side + 2.0 * handle
    if category == "bottle":
        return side * (rel[:, 1] < 0.6) + 0.05
    if category == "can":
        return side + 0.05
    if category == "bowl":
        return (rel[:, 1] > 0.5) * (1.0 + (normals[:, 1] < 0.5)) + 0.05
    if category == "laptop":  # the sides of the base (the lid is too thin to hold a 1 kg slab by)
        return ((np.abs(normals[:, 1]) < 0.3) & (rel[:, 1] < 0.2)) + 1e-3
    if category == "camera":
        return side + 0.1
    # anything else (boxes, scans): avoid the faces across the thinnest extent, so the hand wraps
    # around the thin side (a book by its spine) rather than lying on a wide face
    thin = np.eye(3)[int(np.argmin(size))]
    return 1.0 - 0.9 * np.abs(normals @ thin) if size.min() < 0.6 * size.max() else np.ones(len(points))


def initial_candidates(
    mesh: trimesh.Trimesh, category: str, hand, problem: GraspProblem, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Starting rotations (B, 3, 3), translations (B, 3), angles (B, 15, 3) and approach normals (B, 3).

    With a support plane (``problem.support``), points within :data:`SUPPORT_REACH` of it and faces
    turned down are picked rarely (a hand placed there would reach through the table)."""
    centre, palm_normal, forward = hand.palm_frame()
    points, normals = sample_surface(mesh, max(256, 8 * count), rng)
    normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    weight = np.clip(surface_preferences(category, points, normals, mesh.bounds), 1e-6, None)
    if problem.support is not None:
        height = np.clip((points[:, 1] - problem.support) / SUPPORT_REACH, 0.0, 1.0)
        weight = weight * np.clip(height * (normals[:, 1] > -0.5), 1e-3, 1.0)
    picks = rng.choice(len(points), size=count, replace=len(points) < count, p=weight / weight.sum())
    open_a = np.asarray(problem.space.open_angles())
    fist_a = np.asarray(problem.space.fist_angles())
    extents = np.asarray(mesh.extents)
    revolved = category in ("bottle", "bowl", "can", "mug")
    up = np.array([0.0, 1.0, 0.0]) if revolved else np.eye(3)[int(np.argmax(extents))]
    toward = FINGERS_TOWARD.get(category)
    p, n = points[picks], normals[picks]
    rots = align_frames(palm_normal, forward, -n, tangent_direction(n, rng, up=up, toward=toward))
    trans = p + n * PALM_GAP - rots @ np.asarray(centre, dtype=np.float64)
    angles = np.broadcast_to(open_a + START_CURL * (fist_a - open_a), (count, *open_a.shape)).copy()
    return rots, trans, angles, n


def synthesize_grasps(
    mesh: trimesh.Trimesh,
    hand,
    rng: np.random.Generator,
    count: int,
    category: str = "",
    key: str | None = None,
    candidates: int | None = None,
    grasp_filter: GraspFilter | None = None,
    settings: OptimiseSettings | None = None,
    evaluator: GraspEvaluator | None = None,
    max_rounds: int = 1,
    round_rng: Callable[[int], np.random.Generator] | None = None,
    support: float | None = None,
) -> tuple[list[GraspResult], SynthesisReport]:
    """Up to ``count`` accepted grasps of ``mesh`` (mesh frame) by ``hand``, best first, and what
    happened to the candidates (``candidates`` per round, at most ``max_rounds`` rounds).

    ``support``: the height (mesh frame, y up) of a table the object stands on, or None. The
    optimisation keeps the hand above it, and a candidate with any hand vertex below it is rejected
    (reason ``table``) before the costlier checks; accepted grasps carry ``table_clearance_cm``.

    Runs with one torch thread (see :func:`hoigen.grasp.optimize.one_thread`)."""
    with one_thread():
        return _synthesize(
            mesh, hand, rng, count, category, key, candidates, grasp_filter, settings, evaluator, max_rounds, round_rng,
            support,
        )  # fmt: skip


def _synthesize(
    mesh, hand, rng, count, category, key, candidates, grasp_filter, settings, evaluator, max_rounds, round_rng,
    support=None,
) -> tuple[list[GraspResult], SynthesisReport]:
    import time

    import torch

    from hoigen.grasp.skin import vertex_skin
    from hoigen.objects.sdf import mesh_key

    t0 = time.perf_counter()
    grasp_filter = grasp_filter or GraspFilter()
    key = key or mesh_key(mesh)
    ev = evaluator or GraspEvaluator(mesh, hand, key)
    batch = candidates or max(16, 3 * count)  # a step costs about the same for 8 or 48
    lo, hi = mesh.bounds
    problem = GraspProblem(hand, ev.sdf, (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2), support=support)
    report = SynthesisReport(wanted=count)
    accepted: list[GraspResult] = []
    for r in range(max(1, max_rounds)):
        if len(accepted) >= count:
            break
        gen = rng if r == 0 or round_rng is None else round_rng(r)
        report.rounds += 1
        report.candidates += batch
        rot, trans, angles, approach = initial_candidates(mesh, category, hand, problem, batch, gen)
        result = optimise(problem, rot, trans, angles, settings)
        order = np.argsort(result.energy, kind="stable")
        betas = np.zeros(10)
        with torch.no_grad():  # all candidates' vertices at once (canonical frame, betas 0)
            local = vertex_skin(hand)(torch.as_tensor(result.hand_pose, dtype=torch.float32))[0].numpy()
        # each candidate's vertices in the mesh frame, one product per candidate (a batched product may sum
        # in another order), and their height above the table
        rt = zip(result.rotation, result.translation, strict=True)
        placed = np.stack([v.astype(np.float64) @ r.T + t for v, (r, t) in zip(local, rt, strict=True)])
        lowest = None if support is None else placed[:, :, 1].min(axis=1) - support
        signed: dict[int, np.ndarray] = {}  # exact signed distances measured ahead (SIGNED_BLOCK at a time)
        for pos, i in enumerate(order):
            if len(accepted) >= count:
                break
            pose = HandPose(result.rotation[i], result.translation[i], result.hand_pose[i], betas)
            verts = placed[i]
            low = None if lowest is None else float(lowest[i])
            if low is not None and low < SUPPORT_TOL:  # through the table: rejected, nothing else measured
                report.evaluated += 1
                report.reasons.update(["table"])
                continue
            if i not in signed:  # this candidate and the next few in energy order, in one exact query
                ahead = [j for j in order[pos : pos + SIGNED_BLOCK] if lowest is None or lowest[j] >= SUPPORT_TOL]
                signed.update(zip(ahead, ev.exact_signed(placed[ahead]), strict=True))
            metrics = ev.evaluate(
                verts, pose.hand_pose, pose.rotation, pose.translation, grasp_filter=grasp_filter, volume=False,
                signed=signed.pop(i),
            )  # fmt: skip
            if low is not None:
                metrics["table_clearance_cm"] = round(low * 100.0, 4)
            ok = grasp_filter.accepts(metrics)
            metrics["accepted"] = bool(ok)
            metrics["energy"] = round(float(result.energy[i]), 5)
            report.evaluated += 1
            report.reasons.update(grasp_filter.reasons(metrics))
            if ok:
                accepted.append(GraspResult(pose, approach[i], metrics))
    if accepted:  # the volume is no filter criterion: measured once, batched, for the accepted grasps only
        volumes = ev.penetration_volumes_cm3(
            np.stack([g.pose.hand_pose for g in accepted]),
            np.stack([g.pose.rotation for g in accepted]),
            np.stack([g.pose.translation for g in accepted]),
        )
        for g, v in zip(accepted, volumes, strict=True):
            g.metrics["penetration_volume_cm3"] = round(float(v), 4)
    report.accepted = len(accepted)
    report.seconds = time.perf_counter() - t0
    for g in accepted:
        g.metrics.update(
            candidates=report.candidates, evaluated=report.evaluated, rejected=report.rejected,
        )  # fmt: skip
    return accepted, report


def synthesize_grasp(mesh, hand, rng: np.random.Generator, category: str = "", **kwargs) -> GraspResult:
    """One accepted grasp (the best of a small batch): convenience for tests and callers that want one."""
    grasps, report = synthesize_grasps(mesh, hand, rng, 1, category=category, **kwargs)
    if not grasps:
        raise HoigenError(f"grasp: none of {report.evaluated} candidates passed the filters; loosen them")
    return grasps[0]
