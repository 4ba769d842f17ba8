"""The grasp optimiser lowers its energy; accepted grasps pass the filters; trajectories are sound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hoigen.grasp.metrics import GraspEvaluator, GraspFilter
from hoigen.grasp.optimize import GraspProblem, OptimiseSettings, joint_space, optimise, rotation_from_6d
from hoigen.grasp.synth import initial_candidates, synthesize_grasps
from hoigen.grasp.trajectory import approach_penetration_cm, approach_trajectory
from hoigen.hand import load_hand
from hoigen.objects import procedural_objects


@pytest.fixture(scope="module")
def hand():
    return load_hand("right")


@pytest.fixture(scope="module")
def can():
    return procedural_objects(["can"], seed=2)[0]


@pytest.fixture(scope="module")
def evaluator(hand, can):
    return GraspEvaluator(can.mesh, hand, can.sha256)


@pytest.fixture(scope="module")
def grasps(hand, can, evaluator):
    return synthesize_grasps(
        can.mesh, hand, np.random.default_rng(0), 2, category="can", key=can.sha256, candidates=6,
        evaluator=evaluator,
    )  # fmt: skip


def test_rotation_from_6d_is_orthonormal() -> None:
    r = rotation_from_6d(np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32))
    assert r.dtype == np.float32
    assert np.allclose(r @ r.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(r), 1.0, atol=1e-5)


def test_optimiser_lowers_the_energy(hand, can, evaluator) -> None:
    lo, hi = can.mesh.bounds
    problem = GraspProblem(hand, evaluator.sdf, (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2))
    rot, trans, angles, _ = initial_candidates(can.mesh, "can", hand, problem, 4, np.random.default_rng(1))
    settings = OptimiseSettings(steps=25)
    r6 = rot[:, :, :2].transpose(0, 2, 1).reshape(-1, 6).astype(np.float32)
    before, _ = problem.energy(r6, trans.astype(np.float32), angles.astype(np.float32), settings.weights)
    result = optimise(problem, rot, trans, angles, settings)
    assert np.all(result.energy < before)
    assert result.history[-1] < 0.5 * result.history[0]
    again = optimise(problem, rot, trans, angles, settings)  # deterministic
    assert np.array_equal(again.hand_pose, result.hand_pose)


def test_accepted_grasps_pass_the_filters_and_counts_add_up(grasps) -> None:
    results, report = grasps
    f = GraspFilter()
    assert 1 <= len(results) <= 2 and report.candidates == 6 and report.rounds == 1
    assert report.accepted + report.rejected == report.evaluated <= report.candidates
    assert len(results) == report.accepted  # only accepted grasps come back
    assert sum(report.reasons.values()) >= report.rejected
    for g in results:
        m = g.metrics
        assert m["accepted"] and f.accepts(m)
        assert m["evaluated"] == report.evaluated and m["rejected"] == report.rejected
        assert m["penetration_depth_cm"] <= f.max_penetration
        assert m["sim_displacement_cm"] <= f.max_sim_displacement
        assert m["contact_fingers"] >= f.min_contacts
    assert report.accepted >= 1
    space = joint_space(load_hand("right"))
    for g in results:  # final poses lie within the joint limits
        angles = space.from_pose(torch.as_tensor(g.pose.hand_pose, dtype=torch.float32)[None])
        assert float(space.violation(angles)) < 1e-8
    # best (lowest energy) first
    energies = [g.metrics["energy"] for g in results]
    assert energies == sorted(energies)


def test_trajectory_starts_open_away_and_ends_at_the_grasp(hand, grasps, evaluator) -> None:
    g = grasps[0][0]
    frames = approach_trajectory(g.pose, g.approach_dir, 6, 0.3)
    assert np.allclose(frames[0].hand_pose, 0.0)  # open, flat hand
    assert np.isclose(np.dot(frames[0].translation - g.pose.translation, g.approach_dir), 0.3)
    assert np.allclose(frames[-1].hand_pose, g.pose.hand_pose) and np.allclose(frames[-1].rotation, g.pose.rotation)
    assert np.allclose(frames[-1].translation, g.pose.translation)
    verts = np.stack([
        hand.forward(np.zeros(3), f.hand_pose).vertices[0] @ f.rotation.T + f.translation for f in frames
    ]).astype(np.float64)  # fmt: skip
    # the open hand starts well clear of the object; the approach does not pass through it
    assert evaluator.sdf.query_np(verts[0]).max() < -0.05
    assert approach_penetration_cm(verts, evaluator) <= 0.5


def test_a_trajectory_through_the_object_is_caught(hand, grasps, evaluator) -> None:
    g = grasps[0][0]
    # approach from the far side: the hand sweeps through the can on its way in
    frames = approach_trajectory(g.pose, -g.approach_dir, 31, 0.3)  # 1 cm apart: some frame is inside
    verts = np.stack([
        hand.forward(np.zeros(3), f.hand_pose).vertices[0] @ f.rotation.T + f.translation for f in frames
    ]).astype(np.float64)  # fmt: skip
    assert approach_penetration_cm(verts, evaluator) > 2.0
    assert approach_penetration_cm(verts[:2], evaluator) == 0.0  # all frames exempt
