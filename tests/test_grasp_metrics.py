"""Grasp metrics on constructed cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from hoigen.grasp.metrics import GraspEvaluator, GraspFilter, cluster_entropy
from hoigen.grasp.synth import align_frames
from hoigen.hand import load_hand


@pytest.fixture(scope="module")
def hand():
    return load_hand("right")


@pytest.fixture(scope="module")
def flat(hand):
    return hand.forward().vertices[0].astype(np.float64)


def _evaluate(hand, flat, mesh, rotation=np.eye(3), translation=np.zeros(3), key="m"):
    """Metrics of the flat hand placed by ``rotation @ v + translation``."""
    ev = GraspEvaluator(mesh, hand, key)
    return ev.evaluate(flat @ rotation.T + translation, np.zeros(45), rotation, translation)


def test_hand_inside_an_object_penetrates(hand, flat) -> None:
    box = trimesh.creation.box((0.4, 0.4, 0.4))
    box.apply_translation(flat.mean(axis=0))
    m = _evaluate(hand, flat, box, key="big-box")
    assert m["penetration_depth_cm"] > 5.0
    # the whole hand is inside: the intersection is the hand's own volume (~mesh volume)
    volume = trimesh.Trimesh(flat, hand.faces).volume * 1e6
    assert 0.8 * volume < m["penetration_volume_cm3"] < 1.1 * volume
    assert m["contact_fingers"] == 5 and m["contact_ratio"] == 1.0


def test_hand_far_away_has_no_contact_and_the_object_falls(hand, flat) -> None:
    box = trimesh.creation.box((0.05, 0.05, 0.05))
    m = _evaluate(hand, flat, box, translation=np.array([0.0, 0.0, 0.5]), key="small-box")
    assert m["penetration_depth_cm"] == 0 and m["penetration_volume_cm3"] == 0
    assert m["contact_fingers"] == 0 and not m["palm_contact"]
    assert m["sim_displacement_cm"] > 9.0  # free fall over 35 steps of 1/240 s is 10.4 cm
    assert not GraspFilter().accepts(m)
    assert set(GraspFilter().reasons(m)) == {"sim_displacement", "contacts"}
    # with the filter given, the cheap checks fail first: no volume, no pybullet test, still rejected
    ev = GraspEvaluator(box, hand, "small-box")
    quick = ev.evaluate(flat + [0.0, 0.0, 0.5], np.zeros(45), np.eye(3), np.array([0.0, 0.0, 0.5]),
                        grasp_filter=GraspFilter())  # fmt: skip
    assert np.isnan(quick["sim_displacement_cm"]) and np.isnan(quick["penetration_volume_cm3"])
    assert quick["contact_fingers"] == 0 and GraspFilter().reasons(quick) == ["contacts"]
    assert not GraspFilter().accepts(quick)


def test_object_resting_in_an_upturned_palm_stays(hand, flat) -> None:
    centre, normal, forward = hand.palm_frame()
    rot = align_frames(normal, forward, np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]))
    box = trimesh.creation.box((0.04, 0.03, 0.04))
    box.apply_translation([0.0, 0.0152, 0.0])
    m = _evaluate(hand, flat, box, rot, -rot @ centre, key="rest-box")  # palm centre at 0, facing +y
    assert m["palm_contact"]
    assert m["sim_displacement_cm"] < 1.0


def test_cluster_entropy_of_identical_and_separated_grasps() -> None:
    same = np.tile(np.arange(63.0), (12, 1))
    assert cluster_entropy(same) == (0.0, 0.0)
    groups = np.repeat(np.eye(4) * 10.0, 5, axis=0)  # 4 distinct grasps, 5 copies each
    entropy, size = cluster_entropy(groups)
    assert np.isclose(entropy, np.log(4)) and np.isclose(size, 0.0)
    noisy = groups + np.random.default_rng(0).normal(scale=0.01, size=groups.shape)
    entropy, size = cluster_entropy(noisy, k=4)
    assert np.isclose(entropy, np.log(4)) and 0 < size < 0.05
    assert cluster_entropy(noisy, k=4) == cluster_entropy(noisy, k=4)  # deterministic


def test_filter_thresholds() -> None:
    f = GraspFilter(max_penetration=0.5, max_sim_displacement=2.0, min_contacts=3)
    good = {"penetration_depth_cm": 0.4, "sim_displacement_cm": 1.0, "contact_fingers": 3}
    assert f.accepts(good) and f.reasons(good) == []
    assert f.reasons({**good, "penetration_depth_cm": 0.6}) == ["penetration"]


def test_batched_volumes_equal_single_ones_and_the_unpruned_count(hand) -> None:
    """Volumes measured together (any batch size, fixed-size skinning chunks) equal those measured one
    at a time, and the box around the grid's positive cells drops no voxel that the grid counts."""
    import torch

    from hoigen.grasp.metrics import VOLUME_CHUNK

    torus = trimesh.creation.torus(major_radius=0.045, minor_radius=0.015)
    ev = GraspEvaluator(torus, hand, "torus-volume")
    rng = np.random.default_rng(3)
    n = VOLUME_CHUNK + 3  # two chunks, the second padded
    poses = rng.normal(scale=0.3, size=(n, 45))
    rots = np.stack([trimesh.transformations.random_rotation_matrix(rng.random(3))[:3, :3] for _ in range(n)])
    trans = rng.normal(scale=0.03, size=(n, 3)) - rots @ hand.palm_frame()[0]
    together = ev.penetration_volumes_cm3(poses, rots, trans)
    alone = [ev.penetration_volume_cm3(p, r, t) for p, r, t in zip(poses, rots, trans, strict=True)]
    assert together.tolist() == alone
    assert (together > 0).sum() >= 3  # the test means something: several hands cut the torus
    # no pruning: skin the same fixed-size chunks and look up every voxel centre
    full = []
    for s in range(0, n, VOLUME_CHUNK):
        chunk = poses[s : s + VOLUME_CHUNK].astype(np.float32)
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], VOLUME_CHUNK - len(chunk), axis=0)])
        with torch.no_grad():
            pts, _ = ev.interior(torch.from_numpy(chunk))
        for i in range(min(VOLUME_CHUNK, n - s)):
            world = pts[i].numpy().astype(np.float64) @ rots[s + i].T + trans[s + i]
            full.append((ev.sdf.query_np(world) > 0).sum() * ev.pitch**3 * 1e6)
    assert together.tolist() == full


def test_positive_box_bounds_every_positive_lookup() -> None:
    """Random points outside the box never get a positive grid value (nor points beyond the grid)."""
    from hoigen.grasp.metrics import _positive_box
    from hoigen.objects.sdf import SDFGrid

    grid = SDFGrid.from_mesh(trimesh.creation.icosphere(subdivisions=2, radius=0.04))
    lo, hi = _positive_box(grid)
    assert np.isfinite(lo).all() and np.isfinite(hi).all()
    rng = np.random.default_rng(0)
    margin = 2.0 * grid.spacing  # plus points just beyond the box, where a cut would first go wrong
    pts = np.concatenate([rng.uniform(-0.12, 0.12, (100_000, 3)), rng.uniform(lo - margin, hi + margin, (100_000, 3))])
    outside = ~((pts >= lo) & (pts <= hi)).all(axis=1)
    assert outside.sum() > 1000 and (grid.query_np(pts[outside]) <= 0).all()
    assert (grid.query_np(pts[~outside]) > 0).any()


def test_synthesis_fills_in_the_volume_of_every_accepted_grasp(hand) -> None:
    """Synthesis measures the volume after the filters, batched: each accepted grasp carries the value a
    single measurement of its pose gives."""
    from hoigen.grasp.synth import synthesize_grasps

    mesh = trimesh.creation.cylinder(radius=0.03, height=0.12)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    ev = GraspEvaluator(mesh, hand, "cylinder-volume")
    grasps, report = synthesize_grasps(mesh, hand, np.random.default_rng(0), 3, candidates=12, evaluator=ev)
    assert grasps and report.accepted == len(grasps)
    for g in grasps:
        single = round(ev.penetration_volume_cm3(g.pose.hand_pose, g.pose.rotation, g.pose.translation), 4)
        assert g.metrics["penetration_volume_cm3"] == single


def test_exact_signed_of_many_hands_equals_each_hand_alone(hand, flat) -> None:
    """Synthesis measures several candidates' exact signed distances in one call: every value must be
    the one a call for that hand alone gives, bit for bit (the mug has overlapping parts: the union path)."""
    from hoigen.objects import procedural_objects

    mug = procedural_objects(["mug"])[0]
    ev = GraspEvaluator(mug.mesh, hand, mug.sha256)
    rng = np.random.default_rng(3)
    centre = mug.mesh.bounds.mean(axis=0)
    hands = []
    for _ in range(6):
        rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        placed = (flat - flat.mean(axis=0)) @ rot.T + centre + rng.normal(scale=0.03, size=3)
        hands.append(placed)
    stacked = np.stack(hands)
    together = ev.exact_signed(stacked)
    assert together.shape == stacked.shape[:2]
    alone = np.stack([ev.exact_signed(h) for h in hands])
    assert np.array_equal(together.view(np.uint64), alone.view(np.uint64))
    near = together > -0.008
    assert near.sum() > 100 and (~near).sum() > 100  # both the exact and the grid-estimate paths ran
    assert (together > 0).any()  # some vertices inside
