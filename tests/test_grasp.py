"""Grasp synthesis and the approach trajectory on the embedded hand and procedural objects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hoigen.grasp.metrics import GraspFilter
from hoigen.grasp.synth import synthesize_grasp
from hoigen.grasp.trajectory import HandPose, approach_trajectory
from hoigen.hand import load_hand
from hoigen.objects import procedural_objects
from hoigen.objects.geometry import signed_distance


@pytest.fixture(scope="module")
def hand():
    return load_hand("right")


def test_vertex_fingers_hold_their_fingertips(hand) -> None:
    fingers = hand.vertex_fingers
    assert fingers.shape == (hand.num_vertices,)
    assert set(np.unique(fingers)) == {-1, 0, 1, 2, 3, 4}
    assert [int(fingers[i]) for i in hand.tip_vertex_ids] == [0, 1, 2, 3, 4]


def test_grasp_touches_without_deep_penetration(hand) -> None:
    can = procedural_objects(["can"])[0]
    loose = GraspFilter(max_penetration=1.0, max_sim_displacement=1e3, min_contacts=2)
    kwargs = {"category": "can", "candidates": 3, "grasp_filter": loose}
    result = synthesize_grasp(can.mesh, hand, np.random.default_rng(3), **kwargs)
    posed = hand.forward(*result.pose.mano_params(hand).values())
    sd = signed_distance(can.mesh, posed.vertices[0])
    assert sd.max() < 0.01  # under 1 cm inside
    assert result.metrics["contact_fingers"] >= 2
    assert np.isclose(result.metrics["penetration_depth_cm"], max(sd.max(), 0) * 100, atol=1e-3)
    fingers = hand.vertex_fingers
    touching = sum(bool(np.any(sd[fingers == k] > -0.005)) for k in range(5))
    assert touching == result.metrics["contact_fingers"]
    again = synthesize_grasp(can.mesh, hand, np.random.default_rng(3), **kwargs)
    assert np.array_equal(again.pose.hand_pose, result.pose.hand_pose)


def test_approach_trajectory_slerps_from_a_flat_hand(hand) -> None:
    rng = np.random.default_rng(0)
    grasp = HandPose(
        rotation=Rotation.random(random_state=1).as_matrix(),
        translation=np.array([0.1, 0.0, 0.0]),
        hand_pose=rng.normal(scale=0.3, size=45),
        betas=np.zeros(10),
    )
    start_rot = Rotation.from_rotvec([0.0, 0.4, 0.0]).as_matrix() @ grasp.rotation
    frames = approach_trajectory(grasp, np.array([0.0, 2.0, 0.0]), 5, 0.3, start_rotation=start_rot)
    assert len(frames) == 5
    assert np.allclose(frames[0].translation, [0.1, 0.3, 0.0]) and np.allclose(frames[0].hand_pose, 0)
    assert np.allclose(frames[-1].rotation, grasp.rotation, atol=1e-9)
    assert np.allclose(frames[-1].hand_pose, grasp.hand_pose, atol=1e-9)
    assert np.allclose(frames[2].translation, [0.1, 0.15, 0.0])
    # the middle frame's rotation is half way on the geodesic
    half = Rotation.from_matrix(frames[2].rotation) * Rotation.from_matrix(start_rot).inv()
    full = Rotation.from_matrix(grasp.rotation) * Rotation.from_matrix(start_rot).inv()
    assert np.isclose(half.magnitude(), full.magnitude() / 2)
    # per-joint slerp: joint angles grow monotonically along the trajectory
    angles = np.array([np.linalg.norm(f.hand_pose.reshape(15, 3), axis=1) for f in frames])
    assert np.all(np.diff(angles, axis=0) >= -1e-9)
    # MANO parameters reproduce the rigid placement
    params = frames[-1].mano_params(hand)
    posed = hand.forward(*params.values()).vertices[0]
    canon = hand.forward(np.zeros(3), grasp.hand_pose, np.zeros(10), np.zeros(3)).vertices[0]
    assert np.allclose(posed, canon @ grasp.rotation.T + grasp.translation, atol=1e-5)


def test_vertex_skin_matches_the_hand_model(hand) -> None:
    import torch

    from hoigen.grasp.skin import vertex_skin

    poses = np.stack([hand.curl_pose(0.3), hand.curl_pose(0.8)]).reshape(2, 45)
    with torch.no_grad():
        verts = vertex_skin(hand)(torch.as_tensor(poses, dtype=torch.float32))[0].numpy()
    for pose, v in zip(poses, verts, strict=True):
        ref = hand.forward(np.zeros(3), pose, np.zeros(10), np.zeros(3)).vertices[0]
        assert np.abs(v - ref).max() < 1e-6
    # a rigid placement folded into the skinning equals moving the skinned points and joints
    from scipy.spatial.transform import Rotation

    rot = torch.as_tensor(Rotation.from_rotvec([[0.3, -1.2, 0.5], [2.0, 0.1, -0.4]]).as_matrix(), dtype=torch.float32)
    shift = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.3, -0.1]])
    with torch.no_grad():
        pts, joints = vertex_skin(hand)(torch.as_tensor(poses, dtype=torch.float32))
        placed, placed_joints = vertex_skin(hand)(torch.as_tensor(poses, dtype=torch.float32), rot, shift)
    assert torch.allclose(placed, pts @ rot.transpose(1, 2) + shift[:, None], atol=1e-6)
    assert torch.allclose(placed_joints, joints @ rot.transpose(1, 2) + shift[:, None], atol=1e-6)


def test_hand_skin_applies_pose_blend_shapes_like_smplx(hand) -> None:
    """Real MANO has pose blend shapes (the embedded hand has none): the skin's general path matches smplx."""
    import torch

    from hoigen.grasp.skin import HandSkin

    mano = hand._mano
    saved = mano.posedirs.detach().clone()
    try:
        mano.posedirs.data = torch.as_tensor(np.random.default_rng(0).normal(0, 2e-3, saved.shape), dtype=saved.dtype)
        ids = np.arange(0, hand.num_vertices, 7)
        skin = HandSkin(hand, ids)
        assert skin.has_blend
        pose = hand.curl_pose(0.6).reshape(1, 45)
        with torch.no_grad():
            pts, joints = skin(torch.as_tensor(pose, dtype=torch.float32))
        ref = hand.forward(np.zeros(3), pose[0], np.zeros(10), np.zeros(3))
        flat = hand.forward(np.zeros(3), np.zeros(45), np.zeros(10), np.zeros(3)).vertices[0][ids]
        assert np.abs(pts[0].numpy() - ref.vertices[0][ids]).max() < 1e-6
        assert np.abs(ref.vertices[0][ids] - flat).max() > 0.01  # the pose moved them (not a trivial match)
    finally:
        mano.posedirs.data = saved


def test_tangent_direction_points_the_fingers_the_way_a_category_asks() -> None:
    from hoigen.grasp.synth import tangent_direction

    rng = np.random.default_rng(0)
    normal = np.array([0.0, 0.0, 1.0])  # the front side of a laptop's base
    free = np.array([tangent_direction(normal, rng, up=(1.0, 0.0, 0.0)) for _ in range(200)])
    down = np.array([tangent_direction(normal, rng, up=(1.0, 0.0, 0.0), toward=(0, -1, 0)) for _ in range(200)])
    assert (free[:, 1] > 0.5).any() and (free[:, 1] < -0.5).any()  # either way round without a preference
    assert (down[:, 1] < 0).all()  # always under the base with one
    assert np.allclose(np.abs(down @ normal), 0.0, atol=1e-12)  # still tangent to the surface


def test_laptop_grasps_start_on_the_sides_of_the_base() -> None:
    from hoigen.grasp.synth import surface_preferences
    from hoigen.objects import procedural_objects
    from hoigen.objects.geometry import sample_surface

    mesh = procedural_objects(["laptop"])[0].mesh
    points, normals = sample_surface(mesh, 4000, np.random.default_rng(0))
    weight = surface_preferences("laptop", points, normals, mesh.bounds)
    lo, hi = mesh.bounds
    base_side = (np.abs(normals[:, 1]) < 0.3) & ((points[:, 1] - lo[1]) / (hi[1] - lo[1]) < 0.2)
    assert base_side.any() and weight[base_side].sum() / weight.sum() > 0.9
