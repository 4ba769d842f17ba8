"""DexYCB ingest: a tiny fake release in the real layout -> shards whose conditions match render's drawing."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from clirun import exit_code

from hoigen.data.shards import list_shards, read_shard
from hoigen.geometry.normals import encode_normals, normals_from_depth
from hoigen.hand.skeleton import draw_skeleton
from hoigen.render.cameras import CAMERA_PRESETS, preset_intrinsics

SERIAL = "836212060125"  # the camera of render's "dexycb" preset
SEQUENCE = "20200709-weiy/20200709_141754"
PLANE_NORMAL = np.array([0.3, -0.2, -1.0]) / np.linalg.norm([0.3, -0.2, -1.0])  # facing the camera
PLANE_POINT = np.array([0.0, 0.0, 0.7])
HAND_BOX = (100, 200, 200, 300)  # rows, cols (y0, y1, x0, x1)
MUG_BOX = (250, 400, 250, 450)
BOX_BOX = (50, 150, 450, 600)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plane_depth(K: np.ndarray, width: int = 640, height: int = 480) -> np.ndarray:
    """Metric depth of the plane n . X = n . p0 seen through K."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=2)
    return float(PLANE_NORMAL @ PLANE_POINT) / (rays @ PLANE_NORMAL)


def _joints2d(frame: int) -> np.ndarray:
    rng = np.random.default_rng(frame)
    joints = np.column_stack([rng.uniform(120, 520, 21), rng.uniform(60, 420, 21)])
    joints[7] = -1.0  # not annotated
    joints[3] = (620.0, 300.0)  # outside the square crop
    return joints


def make_fake_dexycb(root: Path) -> Path:
    """Calibration, one model, one sequence seen by one camera for 3 frames (frame 1: no hand)."""
    preset = CAMERA_PRESETS["dexycb"]
    intrinsics = root / "calibration" / "intrinsics"
    intrinsics.mkdir(parents=True)
    color = {"fx": preset.fx, "fy": preset.fy, "ppx": preset.cx, "ppy": preset.cy}
    (intrinsics / f"{SERIAL}_640x480.yml").write_text(yaml.safe_dump({"color": color, "depth": color}))
    mano = root / "calibration" / "mano_20200709-subject-01_right"
    mano.mkdir(parents=True)
    (mano / "mano.yml").write_text(yaml.safe_dump({"betas": [0.1 * i for i in range(10)]}))
    model = root / "models" / "025_mug"
    model.mkdir(parents=True)
    corners = [(x, y, z) for x in (-0.04, 0.04) for y in (-0.05, 0.05) for z in (-0.04, 0.04)]
    faces = [(1, 3, 4), (1, 4, 2), (5, 6, 8), (5, 8, 7), (1, 2, 6), (1, 6, 5), (3, 7, 8), (3, 8, 4), (1, 5, 7),
             (1, 7, 3), (2, 4, 8), (2, 8, 6)]  # fmt: skip
    (model / "textured_simple.obj").write_text(
        "".join(f"v {x} {y} {z}\n" for x, y, z in corners) + "".join(f"f {a} {b} {c}\n" for a, b, c in faces)
    )
    sequence = root / SEQUENCE
    (sequence / SERIAL).mkdir(parents=True)
    meta = {
        "serials": [SERIAL], "num_frames": 3, "ycb_ids": [14, 2], "ycb_grasp_ind": 0, "mano_sides": ["right"],
        "mano_calib": ["20200709-subject-01_right"], "extrinsics": "20200702_151821",
    }  # fmt: skip
    (sequence / "meta.yml").write_text(yaml.safe_dump(meta))
    K, _, _ = preset_intrinsics("dexycb")
    depth_mm = np.round(plane_depth(K) * 1000).astype(np.uint16)
    rng = np.random.default_rng(0)
    for frame in range(3):
        folder = sequence / SERIAL
        image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"color_{frame:06d}.jpg"), image)
        cv2.imwrite(str(folder / f"aligned_depth_to_color_{frame:06d}.png"), depth_mm)
        seg = np.zeros((480, 640), np.uint8)
        for box, value in ((HAND_BOX, 255), (MUG_BOX, 14), (BOX_BOX, 2)):
            seg[box[0] : box[1], box[2] : box[3]] = value
        pose_y = np.zeros((2, 3, 4), np.float32)
        pose_y[:, :, :3] = np.eye(3)
        pose_y[0, :, 3] = (0.05, 0.02, 0.7)
        hand = frame != 1
        np.savez_compressed(
            folder / f"labels_{frame:06d}.npz",
            seg=seg,
            pose_y=pose_y,
            pose_m=(rng.normal(0, 0.3, (1, 51)) if hand else np.zeros((1, 51))).astype(np.float32),
            joint_3d=(rng.uniform(0.5, 0.8, (1, 21, 3)) if hand else -np.ones((1, 21, 3))).astype(np.float32),
            joint_2d=(_joints2d(frame)[None] if hand else -np.ones((1, 21, 2))).astype(np.float32),
        )
    return root


@pytest.fixture(scope="module")
def dexycb(tmp_path_factory) -> Path:
    return make_fake_dexycb(tmp_path_factory.mktemp("dexycb"))


def test_normals_from_depth_of_a_plane_are_exact():
    K, width, height = preset_intrinsics("dexycb")
    depth = plane_depth(K, width, height)
    labels = np.zeros((height, width), np.uint8)
    labels[100:300, 200:400] = 2
    normals, defined = normals_from_depth(depth, K, labels=labels)
    assert defined[100:300, 200:400].all() and not defined[labels == 0].any()  # the whole region, edges too
    assert np.abs(normals[defined] - PLANE_NORMAL).max() < 1e-9
    colours = encode_normals(normals, defined)
    expected = np.round(127.5 - 127.5 * PLANE_NORMAL).astype(np.uint8)
    assert (colours[defined] == expected).all() and (colours[~defined] == 0).all()
    frontal = encode_normals(np.array([[[0.0, 0.0, -1.0]]]), np.ones((1, 1), bool))
    assert tuple(frontal[0, 0]) == (128, 128, 255)  # render's colour for a surface facing the camera


def test_ingest_writes_the_contract_with_render_conditions(dexycb, tmp_path):
    out = tmp_path / "native"
    assert exit_code("ingest", "dexycb", dexycb, "--out", out, "-q") == 0
    shards = list_shards(out)
    assert len(shards) == 1 and (out / "index.parquet").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "ingest" and run["objects_dir"] == str(out.resolve())
    samples = list(read_shard(shards[0]))
    assert [s["__key__"] for s in samples] == ["025-mug_0000_000_00", "025-mug_0000_002_00"]  # frame 1: no hand
    sample = samples[0]
    ann = sample["ann.json"]
    K, width, height = preset_intrinsics("dexycb")
    assert np.allclose(ann["camera"]["K"], K) and (ann["camera"]["width"], ann["camera"]["height"]) == (640, 480)
    assert ann["object"]["id"] == "025-mug" and ann["object"]["name"] == "mug" and ann["object"]["category"] == "mug"
    assert ann["object"]["mesh_sha256"] and (out / "objects" / "025-mug.ply").exists()
    assert np.allclose(np.array(ann["object"]["pose"])[:3, 3], (0.05, 0.02, 0.7))
    assert ann["hand"]["side"] == "right" and ann["hand"]["hand_pose"] is None and len(ann["hand"]["pose_pca"]) == 45
    assert np.allclose(ann["hand"]["betas"], [0.1 * i for i in range(10)])

    seg = sample["seg.png"]
    assert seg[150, 250] == 1 and seg[300, 300] == 2 and seg[100, 500] == 3 and seg[10, 10] == 0
    assert sample["depth.png"].dtype == np.uint16 and sample["image.jpg"].shape == (480, 640, 3)
    # Skeleton: render's drawing of the same 2D joints (the unannotated one left out).
    raw = _joints2d(0)
    assert np.allclose(ann["hand"]["joints2d"][0], raw[0]) and ann["hand"]["joints_visible"][7] is False
    assert ann["hand"]["joints2d"][7] == [-1.0, -1.0]
    joints = np.array(ann["hand"]["joints2d"])
    expected = draw_skeleton(joints, np.array(ann["hand"]["joints_visible"]), width, height)
    assert np.array_equal(sample["skeleton.png"], expected) and sample["skeleton.png"].any()
    # Normals: render's colour of the plane on hand and object pixels (depth quantised to mm),
    # background black as in render.
    colour = np.round(127.5 - 127.5 * PLANE_NORMAL)
    normal = sample["normal.png"].astype(np.int32)
    error = np.abs(normal[seg > 0] - colour)
    assert error.max() <= 5 and error.mean() < 0.5  # measured: max 4 (at region edges), mean 0.43
    assert (normal[seg == 0] == 0).all()


def test_ingest_crops_like_render_and_converts_mano(dexycb, tmp_path):
    from hoigen.hand.model import load_mano_pickle

    mano_dir = Path(__file__).resolve().parents[1] / "hoigen" / "hand" / "assets" / "embedded"
    out = tmp_path / "square"
    assert exit_code("ingest", "dexycb", dexycb, "--out", out, "--size", "64", "--mano-dir", mano_dir, "-q") == 0
    sample = next(read_shard(list_shards(out)[0]))
    ann = sample["ann.json"]
    assert np.allclose(ann["camera"]["K"], preset_intrinsics("dexycb", 64)[0])  # render's --camera dexycb --size 64
    scale = 64 / 480
    expected = scale * (_joints2d(0) - [80, 0] + 0.5) - 0.5
    joints = np.array(ann["hand"]["joints2d"])
    assert np.allclose(joints[ann["hand"]["joints_visible"]], expected[ann["hand"]["joints_visible"]])
    assert ann["hand"]["joints_visible"][3] is False  # outside the crop
    assert sample["seg.png"].shape == (64, 64) and sample["normal.png"].shape == (64, 64, 3)
    assert np.array_equal(
        sample["skeleton.png"], draw_skeleton(joints, np.array(ann["hand"]["joints_visible"]), 64, 64)
    )
    mano = load_mano_pickle(mano_dir / "MANO_RIGHT.pkl")
    full = np.array(ann["hand"]["pose_pca"]) @ np.asarray(mano["hands_components"])[:45] + mano["hands_mean"]
    assert np.allclose(ann["hand"]["hand_pose"], full)

    # hoigen train reads the ingest output (captions fall back to the object's name).
    scenery = tmp_path / "scenery"
    scenery.mkdir()
    for i in range(2):
        cv2.imwrite(str(scenery / f"bg{i}.jpg"), np.full((40, 40, 3), 60 * i, np.uint8))
    model = tmp_path / "model"
    args = ("train", "--in", out, "--steps", "2", "--size", "32", "--batch-size", "2", "--out", model, "-q")
    assert exit_code(*args, "--bg-dir", scenery, "--bg-mode", "loss", "--bg-every", "2", "--threads", "1") == 0
    record = json.loads((model / "hoigen_train.json").read_text())
    assert record["data"]["samples"] == 2 and record["data"]["captions"] == {"fallback": 2}
    assert record["data"]["background_images"] == 2 and len(record["bg_losses"]) == 1


def test_ingest_errors_name_the_file(tmp_path, capsys):
    assert exit_code("ingest", "dexycb", tmp_path / "nowhere", "--out", tmp_path / "o") == 1
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "calibration").mkdir()
    assert exit_code("ingest", "dexycb", tmp_path, "--out", tmp_path / "o") == 1
    assert "meta.yml" in capsys.readouterr().err
