"""The embedded hand v1 against issue 3's requirements: smplx loading (PCA too), a closed manifold
skin, anthropometric proportions, skinning that survives flexion to the limits, MANO joint order,
a PCA pose space within the joint limits, and betas that change what they claim to."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
import trimesh

from hoigen.hand import load_hand
from hoigen.hand.embedded import ANTHRO_RANGES_MM, EMBEDDED_DIR, EMBEDDED_HAND_NAME
from hoigen.hand.grasp_prior import sample_grasp_angles
from hoigen.hand.keypoints import FINGERS, MANO_JOINT_NAMES, MANO_PARENTS, REAL_MANO_TIP_IDS, joint_index
from hoigen.hand.limits import JointSpace, finger_joint_rows
from hoigen.hand.measure import hand_measurements, self_intersection, winding_numbers
from hoigen.hand.model import load_mano_pickle

SIDES = ("right", "left")
# Stated tolerances (measured on v1: single finger at its limits <= 1.4 % of the vertices, the
# fist 1.1 %; these are the crease of the flexed joints pressing into itself and the fingertip
# meeting the palm).
MAX_FINGER_LIMIT_OVERLAP = 0.02
MAX_FIST_OVERLAP = 0.03


@pytest.fixture(scope="module")
def hands():
    return {side: load_hand(side) for side in SIDES}


def _smplx_mano(side: str, **kwargs):
    import smplx
    from smplx.utils import Struct

    data = load_mano_pickle(EMBEDDED_DIR / f"MANO_{side.upper()}.pkl")
    with contextlib.redirect_stdout(io.StringIO()):
        return smplx.MANO(model_path=str(EMBEDDED_DIR), is_rhand=side == "right", data_struct=Struct(**data),
                          **kwargs)  # fmt: skip


@pytest.mark.parametrize("side", SIDES)
def test_loads_through_smplx_with_and_without_pca(side, hands):
    data = load_mano_pickle(EMBEDDED_DIR / f"MANO_{side.upper()}.pkl")
    assert data["hoigen_model"] == EMBEDDED_HAND_NAME == "hoigen-embedded-hand-v1"
    comps, mean = data["hands_components"], data["hands_mean"]
    assert comps.shape == (45, 45) and mean.shape == (45,)
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-9)
    full = _smplx_mano(side, use_pca=False, flat_hand_mean=True, batch_size=20)
    space = JointSpace.from_hand(hands[side])
    poses = space.to_pose(sample_grasp_angles(space, np.random.default_rng(1), 20))  # grasps
    ref = full(hand_pose=torch.tensor(poses, dtype=torch.float32)).vertices.detach().numpy()
    mean_only = full(hand_pose=torch.tensor(np.tile(mean, (20, 1)), dtype=torch.float32)).vertices
    base_err = np.linalg.norm(mean_only.detach().numpy() - ref, axis=-1)
    # smplx adds hands_mean when flat_hand_mean=False, and treats num_pca_comps=45 as no PCA (the
    # 45 numbers are then the pose minus the mean).
    for n in (6, 12, 45):
        layer = _smplx_mano(side, use_pca=True, num_pca_comps=n, flat_hand_mean=False, batch_size=20)
        coeffs = (poses - mean) @ comps[:n].T
        arg = coeffs @ comps if n == 45 else coeffs
        out = layer(hand_pose=torch.tensor(arg, dtype=torch.float32)).vertices.detach().numpy()
        assert out.shape == (20, hands[side].num_vertices, 3)
        err = np.linalg.norm(out - ref, axis=-1)
        if n == 45:
            assert err.max() < 1e-5
        else:  # a few components keep most of a grasp (6: 92 % of the variance, p95 error 0.8 cm)
            assert np.percentile(err, 95) < 0.015 and np.percentile(err, 95) < 0.4 * np.percentile(base_err, 95)


@pytest.mark.parametrize("side", SIDES)
def test_skin_is_one_closed_manifold(side, hands):
    hand = hands[side]
    assert 300 <= hand.num_vertices <= 1000
    mesh = trimesh.Trimesh(hand.forward().vertices[0], hand.faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert mesh.euler_number == 2 and mesh.body_count == 1  # one sphere-like surface
    assert 2.5e-4 < mesh.volume < 4.5e-4  # m^3; adult hands are ~3-4.5e-4
    edges = mesh.edges_unique_length
    assert edges.min() > 0.002 and edges.max() < 0.015  # even triangles, no slivers
    assert np.degrees(mesh.face_angles.min()) > 15


def test_flat_hand_proportions_in_published_ranges(hands):
    out = hands["right"].forward()
    m = hand_measurements(out.joints[0], out.vertices[0])
    for name, (lo, hi) in ANTHRO_RANGES_MM.items():
        assert lo <= m[name] <= hi, (name, m[name], (lo, hi))
    assert 170 <= m["hand_length"] <= 200  # the 17-20 cm
    left = hands["left"].forward()
    m_left = hand_measurements(left.joints[0], left.vertices[0])
    assert all(abs(m_left[k] - m[k]) < 1e-3 for k in m)


@pytest.mark.parametrize("side", SIDES)
def test_each_finger_flexed_to_its_limit_keeps_the_skin_sound(side, hands):
    hand = hands[side]
    space = JointSpace.from_hand(hand)
    rest = hand.forward().vertices[0]
    volume0 = trimesh.Trimesh(rest, hand.faces, process=False).volume
    rest_winding = winding_numbers(rest, rest, hand.faces)
    poses = []
    for finger in FINGERS:
        angles = np.zeros((15, 3))
        rows = finger_joint_rows(finger)
        angles[rows, 0] = space.upper[rows, 0]
        poses.append(angles)
    poses.append(space.fist_angles())
    posed = hand.forward(hand_pose=space.to_pose(np.stack(poses))).vertices
    for name, verts in zip(FINGERS + ("fist",), posed, strict=True):
        mesh = trimesh.Trimesh(verts, hand.faces, process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.volume > (0.9 if name == "fist" else 0.93) * volume0, name  # no tearing or inside-out
        if side == "left":
            continue  # the left hand is the right one mirrored: the same overlaps
        overlap = self_intersection(verts, hand.faces, rest_winding).mean()
        assert overlap < (MAX_FIST_OVERLAP if name == "fist" else MAX_FINGER_LIMIT_OVERLAP), (name, overlap)


def test_skinning_weights_are_smooth(hands):
    hand = hands["right"]
    w = hand._mano.lbs_weights.detach().numpy()
    assert np.all(w >= 0) and np.allclose(w.sum(axis=1), 1, atol=1e-6)
    edges = trimesh.Trimesh(hand.forward().vertices[0], hand.faces, process=False).edges_unique
    jump = 0.5 * np.abs(w[edges[:, 0]] - w[edges[:, 1]]).sum(axis=1)
    assert jump.max() < 0.75 and np.percentile(jump, 95) < 0.4  # no edge switches bones outright
    blended = (w > 0.05).sum(axis=1) > 1
    assert 0.2 < blended.mean() < 0.8  # joints blend; the middle of bones and the palm do not


@pytest.mark.parametrize("side", SIDES)
def test_joints_in_mano_order_and_tips_at_finger_ends(side, hands):
    hand = hands[side]
    data = load_mano_pickle(hand.source)
    assert list(data["kintree_table"][0, 1:]) == list(MANO_PARENTS[1:])
    j = hand.rest_joints()
    v = hand.forward().vertices[0]
    fingers = hand.vertex_fingers
    for k, finger in enumerate(FINGERS):
        chain = [joint_index(f"{finger}{i}") for i in (1, 2, 3)] + [joint_index(f"{finger}_tip")]
        # MANO's joint order (index, middle, pinky, ring, thumb) maps onto the named chain.
        regressed = data["J_regressor"] @ np.asarray(data["v_template"])
        for i in (1, 2, 3):
            np.testing.assert_allclose(regressed[MANO_JOINT_NAMES.index(f"{finger}{i}")], j[chain[i - 1]], atol=1e-6)
        d = j[chain[2]] - j[chain[1]]
        along = (v[fingers == k] - j[chain[0]]) @ (d / np.linalg.norm(d))
        tip_along = (j[chain[3]] - j[chain[0]]) @ (d / np.linalg.norm(d))
        assert tip_along > along.max() - 0.004, finger  # the tip vertex is (about) the farthest
        assert hand.tip_vertex_ids[k] in np.flatnonzero(fingers == k)
    assert len(REAL_MANO_TIP_IDS) == 5 and data["tip_vertex_ids"] == list(hand.tip_vertex_ids)


def test_pca_poses_within_joint_limits(hands):
    hand = hands["right"]
    space = JointSpace.from_hand(hand)
    data = load_mano_pickle(hand.source)
    comps, mean, sd = data["hands_components"], data["hands_mean"], data["hands_components_sd"]
    assert np.all(np.diff(sd) <= 1e-12) and sd[0] > 0.3
    assert space.violation(space.from_pose(mean)) == 0.0
    rng = np.random.default_rng(0)
    for n in (6, 45):
        coeffs = rng.uniform(-2, 2, size=(1000, n)) * sd[:n]
        angles = space.from_pose(mean + coeffs @ comps[:n])
        excess = np.degrees(np.maximum(space.lower - angles, 0) + np.maximum(angles - space.upper, 0))
        # measured: 0.04 % (6) / 0.08 % (45) of the angles beyond a limit by > 5 deg
        assert (excess > 5).mean() < 0.003, n
        assert (excess.reshape(len(angles), -1).max(axis=1) > 10).mean() < 0.02, n
    # The first component is the hand closing: along it, every finger flexes.
    first = space.from_pose(comps[0])[:12, 0]
    assert np.all(np.sign(first) == np.sign(first[0]))


def _measure(hand, betas):
    out = hand.forward(betas=betas)
    m = hand_measurements(out.joints[0], out.vertices[0])
    v = out.vertices[0]
    palm = (np.abs(v[:, 0] - 0.05) < 0.01) & (np.abs(v[:, 2]) < 0.02)  # mid-palm, not the thenar
    m["palm_thickness"] = float(np.ptp(v[palm, 1]) * 1000)
    return m


def test_betas_change_what_they_claim(hands):
    hand = hands["right"]
    base = _measure(hand, np.zeros(10))

    def delta(i, amount=2.0):
        m = _measure(hand, np.eye(10)[i] * amount)
        return {k: m[k] / base[k] - 1 for k in m}

    size = delta(0)
    assert abs(size["hand_length"] - 0.10) < 0.01 and abs(size["hand_breadth"] - 0.10) < 0.02
    finger = delta(1)
    assert finger["middle_length"] > 0.09 and abs(finger["palm_length"]) < 0.005
    assert finger["hand_length"] > 0.04 and abs(finger["hand_breadth"]) < 0.02
    width = delta(2)
    assert width["hand_breadth"] > 0.08 and abs(width["hand_length"]) < 0.01
    palm = delta(3)
    assert palm["palm_length"] > 0.09 and abs(palm["middle_length"]) < 0.01
    thick = delta(4)
    assert thick["finger_thickness"] > 0.08 and abs(thick["hand_length"]) < 0.01
    assert delta(5)["palm_thickness"] > 0.08
    thumb = delta(6)
    assert thumb["thumb_length"] > 0.1 and abs(thumb["middle_length"]) < 0.005
    for i in (7, 8, 9):
        np.testing.assert_allclose(hand.forward(betas=np.eye(10)[i] * 3).vertices, hand.forward().vertices)
