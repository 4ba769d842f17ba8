"""Tests of the anatomical joint limits table and the joint space (angles <-> MANO axis-angle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hoigen.hand import load_hand
from hoigen.hand.keypoints import FINGERS, MANO_JOINT_NAMES, joint_index
from hoigen.hand.limits import LIMITS_DEG, JointSpace, finger_joint_rows


@pytest.fixture(scope="module", params=["right", "left"])
def hand_space(request):
    hand = load_hand(request.param)
    return hand, JointSpace.from_hand(hand)


def test_limits_table_is_sane():
    assert LIMITS_DEG.shape == (15, 3, 2)
    assert np.all(LIMITS_DEG[..., 0] < LIMITS_DEG[..., 1])
    assert np.all(LIMITS_DEG[..., 0] <= 0) and np.all(LIMITS_DEG[..., 1] >= 0)  # the rest hand is inside
    for finger in FINGERS[1:]:
        mcp, pip, dip = (LIMITS_DEG[r] for r in finger_joint_rows(finger))
        assert -30 <= mcp[0, 0] <= 0 and 80 <= mcp[0, 1] <= 100
        assert -10 <= pip[0, 0] <= 0 and 100 <= pip[0, 1] <= 120
        assert -15 <= dip[0, 0] <= 0 and 80 <= dip[0, 1] <= 95
        assert np.all(np.abs(mcp[1]) <= 25) and np.all(np.abs(pip[1:]) <= 5) and np.all(np.abs(dip[1:]) <= 5)
    thumb = LIMITS_DEG[finger_joint_rows("thumb")]
    assert np.all(thumb[:, 0, 1] <= 90) and np.all(np.abs(thumb[:, 1:]) <= 45)


def test_axes_are_orthonormal_and_mirror(hand_space):
    hand, space = hand_space
    for axes in space.axes:
        np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-9)
    other = JointSpace.from_hand(load_hand("left" if hand.side == "right" else "right"))
    # A mirrored pose (ax, -ay, -az) has the same anatomical angles.
    rng = np.random.default_rng(0)
    angles = rng.uniform(space.lower, space.upper)
    mirrored = (space.to_pose(angles).reshape(15, 3) * [1, -1, -1]).ravel()
    np.testing.assert_allclose(other.from_pose(mirrored), angles, atol=1e-9)


def test_round_trip_numpy_and_torch(hand_space):
    _, space = hand_space
    rng = np.random.default_rng(1)
    angles = rng.normal(scale=0.5, size=(4, 15, 3))
    pose = space.to_pose(angles)
    assert pose.shape == (4, 45)
    np.testing.assert_allclose(space.from_pose(pose), angles, atol=1e-12)
    np.testing.assert_allclose(space.to_pose(space.from_pose(pose)), pose, atol=1e-12)
    assert space.to_pose(angles[0]).shape == (45,) and space.from_pose(pose[0]).shape == (15, 3)
    a_t = torch.tensor(angles, dtype=torch.float32, requires_grad=True)
    p_t = space.to_pose(a_t)
    assert isinstance(p_t, torch.Tensor) and p_t.shape == (4, 45)
    np.testing.assert_allclose(p_t.detach().numpy(), pose, atol=1e-5)
    np.testing.assert_allclose(space.from_pose(p_t).detach().numpy(), angles, atol=1e-5)
    p_t.pow(2).sum().backward()
    np.testing.assert_allclose(a_t.grad.numpy(), 2 * angles, atol=1e-4)  # orthonormal map keeps norms


def test_flexion_curls_each_finger_toward_the_palm(hand_space):
    hand, space = hand_space
    centre, normal, forward = hand.palm_frame()
    rest = hand.rest_joints()
    for finger in FINGERS:
        tip = joint_index(f"{finger}_tip")
        rows = finger_joint_rows(finger)
        for step in (0.3, 0.6):
            angles = np.zeros((15, 3))
            angles[rows, 0] = step
            joints = hand.forward(hand_pose=space.to_pose(angles)).joints[0]
            move = joints[tip] - rest[tip]
            assert move @ normal > 0.01, (hand.side, finger, step)  # toward the palm's side
            if finger != "thumb":
                assert move @ forward < 0  # the tip comes back toward the wrist
            others = [joint_index(f"{f}_tip") for f in FINGERS if f != finger]
            np.testing.assert_allclose(joints[others], rest[others], atol=1e-6)
        if finger == "thumb":  # the thumb swings across the palm, toward the pinky
            lateral = rest[joint_index("index1")] - rest[joint_index("pinky1")]
            assert move @ lateral < 0
        else:  # a finger curls in its own plane: no sideways drift
            side = np.cross(normal, forward)
            assert abs(move @ side) < 0.3 * np.linalg.norm(move)


def test_abduction_turns_fingers_toward_the_thumb(hand_space):
    hand, space = hand_space
    rest = hand.rest_joints()
    lateral = rest[joint_index("index1")] - rest[joint_index("pinky1")]
    for finger in FINGERS[1:]:
        angles = np.zeros((15, 3))
        angles[finger_joint_rows(finger)[0], 1] = 0.2
        joints = hand.forward(hand_pose=space.to_pose(angles)).joints[0]
        assert (joints - rest)[joint_index(f"{finger}_tip")] @ lateral > 0


def test_limits_clamp_violation_and_convenience_poses(hand_space):
    hand, space = hand_space
    assert space.lower.shape == space.upper.shape == (15, 3)
    np.testing.assert_allclose(space.upper, np.deg2rad(LIMITS_DEG[..., 1]))
    for pose in (space.open_angles(), space.fist_angles(), np.zeros((15, 3))):
        assert space.violation(pose) == 0.0
        np.testing.assert_array_equal(space.clamp(pose), pose)
    over = space.fist_angles()
    over[0, 0] = space.upper[0, 0] + 0.1
    over[4, 1] = space.lower[4, 1] - 0.2
    assert np.isclose(space.violation(over), 0.1**2 + 0.2**2)
    assert space.violation(space.clamp(over)) == 0.0
    batch = np.stack([space.fist_angles(), over])
    np.testing.assert_allclose(space.violation(batch), [0.0, 0.05])
    over_t = torch.tensor(batch, requires_grad=True)
    v = space.violation(over_t)
    np.testing.assert_allclose(v.detach().numpy(), [0.0, 0.05])
    v.sum().backward()
    assert over_t.grad[1, 0, 0] > 0 and over_t.grad[1, 4, 1] < 0 and over_t.grad[0].abs().sum() == 0
    np.testing.assert_allclose(space.clamp(over_t).detach().numpy(), space.clamp(batch))
    # The fist closes the fingertips onto the palm.
    centre, _, _ = hand.palm_frame()
    fist = hand.forward(hand_pose=space.to_pose(space.fist_angles())).joints[0]
    tips = [joint_index(f"{f}_tip") for f in FINGERS[1:]]
    assert np.all(np.linalg.norm(fist[tips] - centre, axis=1) < 0.045)
    assert len(MANO_JOINT_NAMES) == 16
