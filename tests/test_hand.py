"""Tests of the hand layer: keypoint orders, the embedded MANO-format hand, and the smplx wrapper."""

from __future__ import annotations

import pickle
import shutil
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import trimesh
from scipy.spatial.transform import Rotation

from hoigen.errors import HoigenError
from hoigen.hand import (
    EMBEDDED_HAND_NAME,
    HAND_BONES,
    HAND_JOINT_NAMES,
    HandModel,
    build_hand_files,
    curl_pose,
    joints21_from_mano,
    load_hand,
    load_mano_pickle,
)
from hoigen.hand.embedded import EMBEDDED_DIR, design_joints21
from hoigen.hand.keypoints import MANO_JOINT_NAMES
from hoigen.hand.model import _ray_hits

MIRROR = np.array([-1.0, 1.0, 1.0])
MANO_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
             "hands_components", "hands_mean")  # fmt: skip


@pytest.fixture(scope="module")
def right() -> HandModel:
    return load_hand("right")


@pytest.fixture(scope="module")
def left() -> HandModel:
    return load_hand("left")


def test_keypoint_tables():
    assert len(HAND_JOINT_NAMES) == 21 and len(set(HAND_JOINT_NAMES)) == 21
    assert HAND_JOINT_NAMES[:5] == ("wrist", "thumb1", "thumb2", "thumb3", "thumb_tip")
    assert HAND_JOINT_NAMES[-1] == "pinky_tip"
    assert len(HAND_BONES) == 20
    children = sorted(c for _, c in HAND_BONES)
    assert children == list(range(1, 21))  # a tree: every joint but the wrist has one parent
    assert all(p < c for p, c in HAND_BONES)


def test_joints21_mapping_uses_names():
    joints16 = np.arange(16, dtype=float)[:, None].repeat(3, 1)
    verts = np.full((10, 3), -1.0)
    tips = [5, 6, 7, 8, 9]
    verts[tips, 0] = [100, 101, 102, 103, 104]
    j21 = joints21_from_mano(joints16[None], verts[None], tips)[0]
    for i, name in enumerate(HAND_JOINT_NAMES):
        if name.endswith("_tip"):
            assert j21[i, 0] == 100 + ("thumb", "index", "middle", "ring", "pinky").index(name[:-4])
        else:
            assert MANO_JOINT_NAMES[int(j21[i, 0])] == name


def test_embedded_forward_shapes_and_size(right):
    assert right.name == EMBEDDED_HAND_NAME and right.is_embedded and right.side == "right"
    out = right.forward()
    v_count = right.num_vertices
    assert 300 <= v_count <= 1500
    assert out.vertices.shape == (1, v_count, 3) and out.vertices.dtype == np.float32
    assert out.joints.shape == (1, 21, 3) and out.joints.dtype == np.float32
    assert right.faces.dtype == np.int64 and right.faces.max() == v_count - 1
    j = out.joints[0]
    length = np.linalg.norm(j[HAND_JOINT_NAMES.index("middle_tip")] - j[0])
    assert 0.15 <= length <= 0.22
    # Regressed joints sit at the designed joint centres; tips are the tip vertices, at the finger ends.
    design = design_joints21("right")
    inner = [i for i in range(21) if i % 4 != 0 or i == 0]
    np.testing.assert_allclose(j[inner], design[inner], atol=1e-5)
    assert np.all(np.linalg.norm(j[4::4] - design[4::4], axis=1) < 0.004)
    np.testing.assert_array_equal(j[4::4], out.vertices[0, list(right.tip_vertex_ids)])
    # MANO rest convention: fingers along -x, thumb on +z.
    assert (j[8::4, 0] < j[0, 0] - 0.12).all()
    assert j[HAND_JOINT_NAMES.index("thumb_tip"), 2] > j[HAND_JOINT_NAMES.index("pinky_tip"), 2] + 0.08
    batch = right.forward(np.zeros((4, 3)), np.zeros((4, 45)), np.zeros((4, 10)), np.zeros((4, 3)))
    assert batch.vertices.shape == (4, v_count, 3) and batch.joints.shape == (4, 21, 3)


def test_mesh_is_closed_and_outward(right, left):
    for hand in (right, left):
        mesh = trimesh.Trimesh(hand.forward().vertices[0], hand.faces, process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert 1.5e-4 < mesh.volume < 6e-4  # m^3; an adult hand is ~3-5e-4
        curled = trimesh.Trimesh(hand.forward(hand_pose=hand.curl_pose(0.7)).vertices[0], hand.faces,
                                 process=False)  # fmt: skip
        assert curled.volume > 0.5 * mesh.volume  # skinning does not turn the mesh inside out


def test_shape_betas_change_size(right):
    base = right.forward().joints[0]
    big = right.forward(betas=np.eye(10)[0] * 2).joints[0]
    long = right.forward(betas=np.eye(10)[1] * 2).joints[0]
    tip = HAND_JOINT_NAMES.index("middle_tip")
    assert np.linalg.norm(big[tip] - big[0]) > 1.1 * np.linalg.norm(base[tip] - base[0])
    assert np.linalg.norm(long[tip] - long[0]) > np.linalg.norm(base[tip] - base[0]) + 0.005
    np.testing.assert_allclose(right.forward(betas=np.eye(10)[7] * 3).joints[0], base, atol=1e-6)


def test_params_for_rigid_round_trip(right, left):
    rng = np.random.default_rng(0)
    for hand in (right, left):
        R = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
        T = rng.normal(size=3) * 0.3
        pose = hand.curl_pose(rng.uniform(0, 1, size=5))
        betas = rng.normal(size=10)
        canon = hand.forward(hand_pose=pose, betas=betas)
        orient, transl = hand.params_for_rigid(R, T, hand_pose=pose, betas=betas)
        posed = hand.forward(orient, pose, betas, transl)
        np.testing.assert_allclose(posed.vertices[0], canon.vertices[0] @ R.T + T, atol=2e-5)
        np.testing.assert_allclose(posed.joints[0], canon.joints[0] @ R.T + T, atol=2e-5)


def test_palm_frame(right, left):
    for hand in (right, left):
        centre, normal, forward = hand.palm_frame()
        np.testing.assert_allclose(normal, [0, -1, 0], atol=1e-6)  # MANO: the palm faces -y
        assert abs(forward[0] - (-1 if hand.side == "right" else 1)) < 0.01
        # On the palm's surface: the palm slab is 2.7-3.3 cm thick about y = 0.
        assert -0.0175 < centre[1] < -0.013
        assert abs(centre[0]) > 0.03  # between the wrist and the knuckles
        tris = hand.forward().vertices[0][hand.faces].astype(np.float64)
        below = _ray_hits(centre - 0.002 * normal, normal, tris)
        assert below.size == 1 and abs(below[0] - 0.002) < 1e-6  # one surface crossing, 2 mm away
        assert _ray_hits(centre + 1e-4 * normal, normal, tris).size == 0


def test_curl_moves_tips_toward_palm(right, left):
    for hand in (right, left):
        centre, normal, _ = hand.palm_frame()
        heights, dists = [], []
        for amount in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
            tips = hand.forward(hand_pose=hand.curl_pose(amount)).joints[0, 8::4]  # index..pinky
            heights.append((tips - centre) @ normal)
            dists.append(np.linalg.norm(tips - centre, axis=1))
        heights, dists = np.array(heights), np.array(dists)
        # The tips rise off the palm plane on the palm's side, then close onto the palm.
        assert np.all(np.diff(heights[:4], axis=0) > 0.01) and np.all(heights[1:] > -0.003)
        assert np.all(np.diff(dists, axis=0) < 0)
        assert np.all(dists[-1] < 0.035)  # a closed fist
        # The thumb swings across the palm toward the pinky side.
        thumb = [hand.forward(hand_pose=hand.curl_pose(a)).joints[0, 4] for a in (0.0, 1.0)]
        assert thumb[1][2] < thumb[0][2] - 0.03
    assert np.all(curl_pose(0.0) == 0)
    only_index = curl_pose([0, 1, 0, 0, 0]).reshape(15, 3)
    assert only_index[0:3].any() and not np.delete(only_index, [0, 1, 2], axis=0).any()


def test_left_is_mirror_of_right(right, left):
    np.testing.assert_allclose(left.forward().vertices[0], right.forward().vertices[0] * MIRROR, atol=1e-7)
    pose_r = right.curl_pose([0.3, 0.5, 0.7, 0.9, 1.0])
    pose_l = left.curl_pose([0.3, 0.5, 0.7, 0.9, 1.0])
    np.testing.assert_allclose(pose_l.reshape(15, 3), pose_r.reshape(15, 3) * [1, -1, -1], atol=1e-9)
    np.testing.assert_allclose(curl_pose(0.6, "left"), (curl_pose(0.6).reshape(15, 3) * [1, -1, -1]).ravel())
    np.testing.assert_allclose(left.forward(hand_pose=pose_l).vertices[0],
                               right.forward(hand_pose=pose_r).vertices[0] * MIRROR, atol=1e-6)  # fmt: skip


def test_shipped_files_equal_a_rebuild(tmp_path):
    paths = build_hand_files(tmp_path)
    assert [p.name for p in paths] == ["MANO_RIGHT.pkl", "MANO_LEFT.pkl"]
    for p in paths:
        shipped = EMBEDDED_DIR / p.name
        assert shipped.stat().st_size < 400_000
        built, ship = load_mano_pickle(p), load_mano_pickle(shipped)
        assert set(built) == set(ship) == set(MANO_KEYS) | {"hoigen_model", "tip_vertex_ids", "hands_components_sd"}
        # The rebuild (marching cubes, np.add.at smoothing, an SVD) rounds the last bits differently
        # on other CPUs: geometry and blend arrays agree to 1e-12 (a picometre on a metre-scale hand,
        # far below float32 MANO outputs' resolution); integer topology (faces, kinematic tree) exactly.
        for key in MANO_KEYS:
            a, b = np.asarray(built[key]), np.asarray(ship[key])
            if np.issubdtype(b.dtype, np.integer):
                np.testing.assert_array_equal(a, b, err_msg=key)
            else:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=key)
        assert built["tip_vertex_ids"] == ship["tip_vertex_ids"]
        # Plain pickle (what smplx itself does) reads the file too, into real arrays.
        with open(shipped, "rb") as fh:
            raw = pickle.load(fh, encoding="latin1")
        assert raw["posedirs"].shape == (len(raw["v_template"]), 3, 135)
        assert raw["kintree_table"][0, 0] == 4294967295 and list(raw["kintree_table"][0, 1:4]) == [0, 1, 2]


def test_loader_errors_and_env(tmp_path, monkeypatch):
    empty = tmp_path / "mano"
    empty.mkdir()
    with pytest.raises(HoigenError) as err:
        load_hand("right", mano_dir=empty)
    msg = str(err.value)
    assert (
        str(empty / "MANO_RIGHT.pkl") in msg and "https://mano.is.tue.mpg.de" in msg and "--mano-dir" in msg
    )
    with pytest.raises(HoigenError):
        load_hand("middle")
    shutil.copy(EMBEDDED_DIR / "MANO_LEFT.pkl", empty / "MANO_LEFT.pkl")
    monkeypatch.setenv("HOIGEN_MANO_DIR", str(empty))
    hand = load_hand("left")
    assert hand.source == empty / "MANO_LEFT.pkl" and hand.side == "left"
    assert load_hand("left") is hand  # cached
    monkeypatch.delenv("HOIGEN_MANO_DIR")
    assert load_hand("left").source == EMBEDDED_DIR / "MANO_LEFT.pkl"


def _write_fake_real_mano(path, data: dict) -> None:
    """Pickle ``data`` the way real MANO files look: chumpy Ch objects, a sparse regressor, no marker."""
    chumpy = types.ModuleType("chumpy")
    ch_mod = types.ModuleType("chumpy.ch")

    class Ch:  # what chumpy pickles: the instance __dict__ with the array under 'x'
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch_mod.Ch = Ch
    chumpy.ch = ch_mod
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch_mod
    try:
        fake = {k: Ch(np.asarray(data[k], dtype=np.float64)) for k in ("v_template", "shapedirs", "weights")}
        fake["posedirs"] = Ch(np.zeros((len(data["v_template"]), 3, 135)))
        fake["J_regressor"] = sp.csc_matrix(np.asarray(data["J_regressor"]))
        fake["J"] = Ch(np.zeros((16, 3)))
        fake.update(kintree_table=data["kintree_table"], f=data["f"], bs_style="lbs", bs_type="lrotmin",
                    hands_components=data["hands_components"], hands_mean=data["hands_mean"],
                    hands_coeffs=np.zeros((10, 45)))  # fmt: skip
        with open(path, "wb") as fh:
            pickle.dump(fake, fh, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_chumpy_pickle_loads_without_chumpy(tmp_path, right):
    data = load_mano_pickle(EMBEDDED_DIR / "MANO_RIGHT.pkl")
    mano_dir = tmp_path / "mano"
    mano_dir.mkdir()
    _write_fake_real_mano(mano_dir / "MANO_RIGHT.pkl", data)
    assert "chumpy" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        with open(mano_dir / "MANO_RIGHT.pkl", "rb") as fh:
            pickle.load(fh, encoding="latin1")
    loaded = load_mano_pickle(mano_dir / "MANO_RIGHT.pkl")
    assert isinstance(loaded["v_template"], np.ndarray) and isinstance(loaded["J_regressor"], np.ndarray)
    np.testing.assert_array_equal(loaded["v_template"], data["v_template"])
    np.testing.assert_array_equal(loaded["J_regressor"], data["J_regressor"])
    hand = load_hand("right", mano_dir=mano_dir)
    assert hand.name == "mano-v1.2" and not hand.is_embedded
    assert hand.tip_vertex_ids == (744, 320, 443, 554, 671)
    np.testing.assert_allclose(hand.forward().vertices, right.forward().vertices, atol=1e-7)


def test_forward_torch_matches_numpy_forward_and_has_gradients():
    import torch

    hand = load_hand("right")
    rng = np.random.default_rng(3)
    orient, pose, transl = rng.normal(0, 0.3, 3), rng.normal(0, 0.2, 45), rng.normal(0, 0.1, 3)
    ref = hand.forward(global_orient=orient, hand_pose=pose, transl=transl)
    pose_t = torch.tensor(pose[None], dtype=torch.float32, requires_grad=True)
    verts, joints = hand.forward_torch(
        global_orient=torch.tensor(orient[None], dtype=torch.float32), hand_pose=pose_t,
        transl=torch.tensor(transl[None], dtype=torch.float32),
    )  # fmt: skip
    assert verts.shape == (1, hand.num_vertices, 3) and joints.shape == (1, 21, 3)
    np.testing.assert_allclose(verts.detach().numpy(), ref.vertices, atol=1e-5)
    np.testing.assert_allclose(joints.detach().numpy(), ref.joints, atol=1e-5)
    joints[0, 20].sum().backward()  # the pinky tip (common order) moves with the pinky joints only
    grad = pose_t.grad.reshape(15, 3).abs().sum(axis=1)
    assert grad[6:9].sum() > 0 and grad[:3].sum() == 0 and grad[9:].sum() == 0  # MANO order: pinky 6-8
