"""NOCS and BOP export read back by loaders written from the formats' documentation.

The scenes are rendered in memory (a procedural mug, a box standing in for the hand as occluder), so
the test needs no grasp run; the CLI chain in test_cli.py covers export on real shards.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hoigen.data.schema import SEG_HAND, SEG_OBJECT, sample_key
from hoigen.export.bop import export_bop
from hoigen.export.common import mesh_to_cam, nocs_to_cam, plan_images
from hoigen.export.nocs import decode_coord_png, export_nocs, load_model_obj
from hoigen.objects import procedural_objects
from hoigen.pose.umeyama import fit_nocs_pose
from hoigen.render.cameras import Camera, intrinsics, look_at
from hoigen.render.renderer import SceneSpec
from hoigen.render.stage import _renderer

SIZE = 128


def _box(center: np.ndarray, half: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    mesh = trimesh.creation.box(extents=2 * np.asarray(half))
    return np.asarray(mesh.vertices) + center, np.asarray(mesh.faces)


def _frames() -> tuple[list[dict], dict]:
    asset = procedural_objects(["mug"])[0]
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("yx", [35, 15], degrees=True).as_matrix()
    pose[:3, 3] = [0.01, 0.02, -0.01]
    eye = np.array([0.1, 0.25, 0.45])
    camera = Camera(intrinsics(SIZE, SIZE, 50.0), look_at(eye, np.zeros(3)), SIZE, SIZE)
    toward = eye / np.linalg.norm(eye)
    occluders = [_box(0.2 * toward + np.array([0.03, 0.0, 0.0]), (0.02, 0.08, 0.02)), _box(eye * 5, (0.01,) * 3)]
    samples = []
    for frame, (hv, hf) in enumerate(occluders):
        joints = np.repeat(hv.mean(0, keepdims=True), 21, 0)
        result = _renderer(SIZE, SIZE).render(
            SceneSpec(hv, hf, asset.mesh, pose, asset.nocs_from_mesh, camera, joints, mesh_key="test-mug")
        )
        key = sample_key(asset.id, 0, frame, 0)
        ann = {
            "key": key,
            "hand": {
                "side": "right",
                "model": "test-box",
                "global_orient": [0.0] * 3,
                "hand_pose": [0.0] * 45,
                "betas": [0.0] * 10,
                "transl": [0.0] * 3,
                "joints3d": joints.tolist(),
                "joints2d": result.joints2d.tolist(),
                "joints_visible": result.joints_visible.tolist(),
            },
            "object": {
                "id": asset.id,
                "category": asset.category,
                "pose": pose.tolist(),
                "nocs_from_mesh": asset.nocs_from_mesh.tolist(),
            },
            "camera": {
                "K": camera.K.tolist(),
                "world_to_cam": camera.world_to_cam.tolist(),
                "width": SIZE,
                "height": SIZE,
            },
        }
        samples.append(
            {
                "__key__": key,
                "ann.json": ann,
                "seg.png": result.seg,
                "depth.png": result.depth,
                "nocs.png": result.nocs,
                "shade.png": result.shade,
                "amodal.png": result.amodal,
            }
        )
    return samples, {asset.id: asset}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("export")
    samples, objects = _frames()
    keys = [s["__key__"] for s in samples]
    assert export_nocs(iter(samples), keys, root / "nocs", objects) == 2
    assert export_bop(iter(samples), keys, root / "bop", objects) == 2
    return {"root": root, "samples": samples, "objects": objects}


def test_scene_has_a_hand_occluded_frame(exported: dict) -> None:
    occluded, free = exported["samples"]
    assert (occluded["seg.png"] == SEG_HAND).sum() > 50 and (occluded["seg.png"] == SEG_OBJECT).sum() > 300
    assert (free["seg.png"] == SEG_HAND).sum() == 0


def load_nocs_image(stem: Path) -> dict:
    """Reads one image as the NOCS release's loader does (cv2, BGR -> RGB, z flipped back)."""
    meta = [line[:-1].split(" ") for line in open(f"{stem}_meta.txt")]
    mask = cv2.imread(f"{stem}_mask.png")[:, :, 2]
    coord = cv2.imread(f"{stem}_coord.png")[:, :, :3][:, :, (2, 1, 0)].astype(np.float32) / 255
    coord[:, :, 2] = 1 - coord[:, :, 2]
    depth = cv2.imread(f"{stem}_depth.png", -1)
    return {"meta": meta, "mask": mask, "coord": coord, "depth": depth}


def test_nocs_export_reads_back_with_the_release_loader(exported: dict) -> None:
    nocs = exported["root"] / "nocs"
    lines = (nocs / "train_list.txt").read_text().split()
    assert lines == ["train/00000/0000", "train/00000/0001"]
    for line, sample in zip(lines, exported["samples"], strict=True):
        img = load_nocs_image(nocs / line)
        assert img["meta"] == [["1", "6", "03797390", "mug-000"]]
        seg = sample["seg.png"]
        assert set(np.unique(img["mask"])) == {1, 255}
        assert np.array_equal(img["mask"] == 1, seg == SEG_OBJECT)
        assert np.all(img["mask"][seg == SEG_HAND] == 255)  # the hand is never object
        assert np.array_equal(img["depth"], sample["depth.png"]) and img["depth"].dtype == np.uint16
        on = seg == SEG_OBJECT
        assert np.abs(img["coord"][on] - sample["nocs.png"][on] / 255.0).max() < 0.5 / 255
        assert np.allclose(
            decode_coord_png(cv2.imread(f"{nocs / line}_coord.png")[..., ::-1])[on],
            sample["nocs.png"][on] / 255.0 - 0.5,
            atol=1e-9,
        )
        hand = json.loads(Path(f"{nocs / line}_hand.json").read_text())
        assert len(hand["joints3d_cam"]) == 21 and len(hand["joints2d"]) == 21


def test_nocs_models_and_gt_pickles_give_the_pose(exported: dict) -> None:
    nocs = exported["root"] / "nocs"
    model = nocs / "obj_models/train/03797390/mug-000"
    v = load_model_obj(model / "model.obj")  # read as the release does (z negated back)
    bbox = np.loadtxt(model / "bbox.txt")
    size = bbox[0] - bbox[1]
    assert abs(np.linalg.norm(size) - 1.0) < 1e-5 and np.allclose(v.max(0) + v.min(0), 0, atol=1e-5)
    asset = exported["objects"]["mug-000"]
    for i, sample in enumerate(exported["samples"]):
        gt = pickle.loads((nocs / f"gts/train/results_train_00000_{i:04d}.pkl").read_bytes())
        assert list(gt["gt_class_ids"]) == [6] and gt["gt_RTs"].shape == (1, 4, 4)
        assert np.allclose(gt["gt_scales"][0], size, atol=1e-5)
        rt = gt["gt_RTs"][0]
        m2c = mesh_to_cam(sample["ann.json"])
        truth = asset.mesh.vertices @ m2c[:3, :3].T + m2c[:3, 3]
        assert np.abs(v @ rt[:3, :3].T + rt[:3, 3] - truth).max() < 1e-3  # within 1 mm
        ys, xs = np.nonzero(sample["seg.png"] == SEG_OBJECT)
        assert list(gt["gt_bboxes"][0]) == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
    gts = json.loads((nocs / "gts/train.json").read_text())
    assert gts["format"] == "hoigen-pose-v1" and set(gts["images"]) == {"train/00000/0000", "train/00000/0001"}


def test_umeyama_on_the_exported_map_recovers_the_stored_pose(exported: dict) -> None:
    nocs = exported["root"] / "nocs"
    for i, sample in enumerate(exported["samples"]):
        img = load_nocs_image(nocs / f"train/00000/{i:04d}")
        fit = fit_nocs_pose(
            img["coord"] - 0.5, img["depth"] / 1000.0, np.asarray(sample["ann.json"]["camera"]["K"]), img["mask"] == 1
        )
        R, t, s = nocs_to_cam(sample["ann.json"])
        angle = np.degrees(np.arccos(np.clip((np.trace(fit.R @ R.T) - 1) / 2, -1, 1)))
        assert angle < 1.0, angle
        assert np.linalg.norm(fit.t - t) < 0.005
        assert abs(fit.s / s - 1) < 0.01


def _ply_vertices(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    n = int(next(line for line in lines if line.startswith("element vertex")).split()[-1])
    start = lines.index("end_header") + 1
    return np.array([[float(x) for x in row.split()[:3]] for row in lines[start : start + n]])


def test_bop_export_reads_back_within_a_millimetre(exported: dict) -> None:
    bop = exported["root"] / "bop"
    scene = bop / "train/000000"
    gt = json.loads((scene / "scene_gt.json").read_text())
    cams = json.loads((scene / "scene_camera.json").read_text())
    info = json.loads((bop / "models/models_info.json").read_text())
    verts = _ply_vertices(bop / "models/obj_000001.ply")
    assert np.allclose(verts.min(0), [info["1"]["min_x"], info["1"]["min_y"], info["1"]["min_z"]], atol=1e-3)
    assert np.allclose(verts.max(0) + verts.min(0), 0, atol=1e-3)  # origin at the bbox centre
    asset = exported["objects"]["mug-000"]
    for i, sample in enumerate(exported["samples"]):
        (g,) = gt[str(i)]
        assert g["obj_id"] == 1 and cams[str(i)]["depth_scale"] == 1.0
        R, t = np.reshape(g["cam_R_m2c"], (3, 3)), np.asarray(g["cam_t_m2c"])
        m2c = mesh_to_cam(sample["ann.json"])
        truth_mm = (asset.mesh.vertices @ m2c[:3, :3].T + m2c[:3, 3]) * 1000
        assert np.abs(verts @ R.T + t - truth_mm).max() < 1.0
        assert np.allclose(np.reshape(cams[str(i)]["cam_K"], (3, 3)), sample["ann.json"]["camera"]["K"])
        depth = cv2.imread(str(scene / f"depth/{i:06d}.png"), -1)
        assert np.array_equal(depth * cams[str(i)]["depth_scale"], sample["depth.png"])


def test_bop_visibility_agrees_with_the_masks_and_excludes_the_hand(exported: dict) -> None:
    scene = exported["root"] / "bop/train/000000"
    infos = json.loads((scene / "scene_gt_info.json").read_text())
    fracts = []
    for i, sample in enumerate(exported["samples"]):
        (info,) = infos[str(i)]
        full = cv2.imread(str(scene / f"mask/{i:06d}_000000.png"), -1) > 0
        visib = cv2.imread(str(scene / f"mask_visib/{i:06d}_000000.png"), -1) > 0
        seg = sample["seg.png"]
        assert np.array_equal(visib, seg == SEG_OBJECT) and not (visib & (seg == SEG_HAND)).any()
        assert not (visib & ~full).any()
        assert info["px_count_all"] == full.sum() and info["px_count_visib"] == visib.sum()
        assert info["visib_fract"] == pytest.approx(visib.sum() / full.sum(), abs=1e-6)
        ys, xs = np.nonzero(full)
        assert info["bbox_obj"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        fracts.append(info["visib_fract"])
    occluded = exported["samples"][0]["seg.png"]
    full0 = cv2.imread(str(scene / "mask/000000_000000.png"), -1) > 0
    assert (full0 & (occluded == SEG_HAND)).sum() > 20  # the amodal mask reaches under the hand
    assert fracts[0] < 0.97 and fracts[1] == 1.0


def test_plan_cuts_trajectories_into_scenes_of_ten_and_holds_out_whole_grasps() -> None:
    keys = [sample_key(o, g, f, v) for o in ("a", "b") for g in range(3) for f in range(12) for v in range(2)]
    plan = plan_images(keys, "train", 0.34)
    assert max(s.index for s in plan.values()) == 9
    for o in ("a", "b"):
        for g in range(3):
            assert len({plan[k].split for k in keys if k.startswith(f"{o}_{g:04d}_")}) == 1
    val = {k.rsplit("_", 2)[0] for k, s in plan.items() if s.split == "val"}
    assert len(val) == 2  # round(0.34 * 6) grasps
    scenes = {(s.split, s.scene) for s in plan.values()}
    for split in ("train", "val"):
        numbers = sorted(n for sp, n in scenes if sp == split)
        assert numbers == list(range(len(numbers)))  # contiguous, as the CAMERA loader counts folders
    assert plan == plan_images(list(reversed(keys)), "train", 0.34)
