"""Export formats read back by the field's own readers (pycocotools, Hugging Face datasets) and the
details the originals' loaders depend on: the NOCS CAMERA z convention, mug handle visibility, BOP
counts of truncated objects, the dataset card's schema.

Scenes are rendered in memory with the render stage's own annotation code (``_rendered_sample``),
a small box standing in for the hand.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import trimesh

from hoigen.data.index import write_run_json
from hoigen.data.schema import SEG_HAND, SEG_OBJECT, sample_key
from hoigen.data.shards import write_shard
from hoigen.export.bop import export_bop
from hoigen.export.coco import HAND_OKS_SIGMAS, export_coco
from hoigen.export.common import handle_share
from hoigen.export.nocs import decode_coord_png, export_nocs, load_model_obj
from hoigen.objects import procedural_objects
from hoigen.render.cameras import Camera, intrinsics, look_at
from hoigen.render.renderer import Renderer, SceneSpec
from hoigen.render.silhouette import silhouette
from hoigen.render.stage import _rendered_sample

SIZE = 96


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    from hoigen.export import common  # noqa: F401  (export must not need the renderer; the test does)
    from hoigen.render.stage import _renderer

    return _renderer(SIZE, SIZE)


def render_sample(renderer: Renderer, asset, eye, target=(0.0, 0.0, 0.0), hand_at=None, frame=0, fov=50.0) -> dict:
    """One sample as the render stage writes it: the object at the origin, a 2 cm box as the hand
    (at ``hand_at``, else far behind the camera), the camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, float)
    camera = Camera(intrinsics(SIZE, SIZE, fov), look_at(eye, np.asarray(target, float)), SIZE, SIZE)
    box = trimesh.creation.box(extents=(0.02, 0.06, 0.02))
    where = np.asarray(hand_at, float) if hand_at is not None else eye * 5
    hv, hf = np.asarray(box.vertices) + where, np.asarray(box.faces)
    joints = where + np.linspace(-0.025, 0.025, 21)[:, None] * np.array([0.0, 1.0, 0.0])
    pose = np.eye(4)
    spec = SceneSpec(hv, hf, asset.mesh, pose, asset.nocs_from_mesh, camera, joints, mesh_key=("t", asset.id))
    result = renderer.render(spec)
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
        },
        "object": {
            "id": asset.id,
            "category": asset.category,
            "mesh_sha256": asset.sha256,
            "pose": pose.tolist(),
            "nocs_from_mesh": asset.nocs_from_mesh.tolist(),
        },
        "trajectory": {"frame": frame, "frames": 4},
    }
    full = silhouette(asset.mesh.vertices, asset.mesh.faces, camera.world_to_cam @ pose, camera.K,
                      result.mask_object_full, renderer.znear)
    return _rendered_sample(key, ann, result, 0, "random", SimpleNamespace(seen=1.0), full)


@pytest.fixture(scope="module")
def assets() -> dict:
    return {a.category: a for a in procedural_objects(["camera", "mug"])}


# ---------------------------------------------------------------- architecture
def test_export_does_not_import_the_renderer() -> None:
    code = (
        "import sys, hoigen.export.nocs, hoigen.export.bop, hoigen.export.coco, hoigen.export.mix;"
        "print(sorted(m for m in sys.modules if m.startswith('hoigen.render')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- NOCS
def test_nocs_camera_model_read_the_release_way_matches_its_coord_map(renderer, assets, tmp_path: Path) -> None:
    asset = assets["camera"]
    sample = render_sample(renderer, asset, eye=(0.25, 0.12, 0.3))
    export_nocs(iter([sample]), [sample["__key__"]], tmp_path, {asset.id: asset})
    v = load_model_obj(tmp_path / "obj_models/train/02942699" / asset.id / "model.obj")
    raw = v * np.array([1.0, 1.0, -1.0])  # the file as a plain OBJ reader sees it
    f = [[int(x) - 1 for x in line.split()[1:]] for line in open(tmp_path / "obj_models/train/02942699" / asset.id /
                                                                   "model.obj") if line.startswith("f ")]
    coord = cv2.imread(str(tmp_path / "train/00000/0000_coord.png"))[:, :, (2, 1, 0)]  # the release reads BGR
    mask = cv2.imread(str(tmp_path / "train/00000/0000_mask.png"))[:, :, 2] == 1
    points = decode_coord_png(coord)[mask]
    assert len(points) > 200
    flipped = trimesh.Trimesh(v, f, process=False)
    plain = trimesh.Trimesh(raw, f, process=False)
    d_release = np.abs(trimesh.proximity.closest_point(flipped, points)[1])
    d_plain = np.abs(trimesh.proximity.closest_point(plain, points)[1])
    assert np.median(d_release) < 0.004 and np.percentile(d_release, 95) < 0.01  # on the surface (1/255 steps)
    assert np.median(d_plain) > 3 * np.median(d_release) and np.percentile(d_plain, 90) > 0.02  # mirrored
    assert plain.volume > 0  # faces reversed with the flip: the file itself is a closed, outward mesh
    # the pose in the gt pickle carries the release-frame model onto the camera-frame surface
    gt = pickle.loads((tmp_path / "gts/train/results_train_00000_0000.pkl").read_bytes())
    assert np.allclose(gt["K"], sample["ann.json"]["camera"]["K"])
    rt = gt["gt_RTs"][0]
    cam_pts = points @ rt[:3, :3].T + rt[:3, 3]
    depth = sample["depth.png"][mask] / 1000.0
    assert np.median(np.abs(cam_pts[:, 2] - depth)) < 0.002
    side = json.loads((tmp_path / "train/00000/0000_camera.json").read_text())
    assert np.allclose(side["K"], sample["ann.json"]["camera"]["K"]) and side["width"] == SIZE


def test_mug_handle_visibility_follows_the_view(renderer, assets, tmp_path: Path) -> None:
    mug = assets["mug"]  # handle on +x
    seen = render_sample(renderer, mug, eye=(0.35, 0.1, 0.08), frame=0)
    hidden = render_sample(renderer, mug, eye=(-0.35, 0.05, 0.0), frame=1)
    covered = render_sample(renderer, mug, eye=(0.35, 0.1, 0.08), hand_at=(0.2, 0.07, 0.04), frame=2)
    shares = [handle_share(s, mug) for s in (seen, hidden, covered)]
    assert shares[0] > 0.25 and shares[1] < 0.02 and shares[2] < shares[0] - 0.1, shares
    samples = [seen, hidden]
    export_nocs(iter(samples), [s["__key__"] for s in samples], tmp_path, {mug.id: mug})
    vis = [pickle.loads((tmp_path / f"gts/train/results_train_00000_{i:04d}.pkl").read_bytes())["handle_visibility"]
           for i in range(2)]
    assert [list(v) for v in vis] == [[1], [0]]
    gts = json.loads((tmp_path / "gts/train.json").read_text())["images"]
    assert gts["train/00000/0001"][0]["handle_visible"] is False


def test_nocs_export_without_val_says_so(renderer, assets, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mug = assets["mug"]
    sample = render_sample(renderer, mug, eye=(0.3, 0.1, 0.1))
    with caplog.at_level("WARNING", logger="hoigen.export"):
        export_nocs(iter([sample]), [sample["__key__"]], tmp_path, {mug.id: mug})
    assert "no val/ split" in caplog.text and "--val-fraction" in caplog.text


# ---------------------------------------------------------------- BOP: truncation
def test_truncated_object_counts_its_whole_silhouette(renderer, assets, tmp_path: Path) -> None:
    mug = assets["mug"]
    eye = np.array([0.0, 0.08, 0.32])
    sample = render_sample(renderer, mug, eye=eye, target=(0.17, 0.05, 0.0))  # the mug cut by the left border
    sil = sample["ann.json"]["object"]["silhouette"]
    inside = int((sample["amodal.png"] & 2).astype(bool).sum())
    assert sil["bbox"][0] < 0 and sil["px_count"] > inside + 50
    # the same view on a canvas three times as large, rendered: the count agrees
    camera = Camera(intrinsics(SIZE, SIZE, 50.0), look_at(eye, np.array([0.17, 0.05, 0.0])), SIZE, SIZE)
    big_K = camera.K.copy()
    big_K[:2, 2] += SIZE
    big = Camera(big_K, camera.world_to_cam, 3 * SIZE, 3 * SIZE)
    far = eye * 5 + np.zeros((3, 3)) + np.eye(3) * 1e-3
    from hoigen.render.stage import _renderer

    res = _renderer(3 * SIZE, 3 * SIZE).render(
        SceneSpec(far, np.array([[0, 1, 2]]), mug.mesh, np.eye(4), mug.nocs_from_mesh, big, np.repeat(far[:1], 21, 0))
    )
    truth = res.mask_object_full
    assert abs(sil["px_count"] - truth.sum()) <= 0.02 * truth.sum()
    xs = np.flatnonzero(truth.any(0))
    assert abs(sil["bbox"][0] - (xs[0] - SIZE)) <= 1
    export_bop(iter([sample]), [sample["__key__"]], tmp_path / "bop", {mug.id: mug})
    (info,) = json.loads((tmp_path / "bop/train/000000/scene_gt_info.json").read_text())["0"]
    assert info["px_count_all"] == sil["px_count"] and info["bbox_obj"][0] == sil["bbox"][0]
    assert info["visib_fract"] == pytest.approx(inside / sil["px_count"], abs=1e-6) and info["visib_fract"] < 0.95
    old = {**sample, "ann.json": json.loads(json.dumps(sample["ann.json"]))}
    del old["ann.json"]["object"]["silhouette"]  # a shard rendered before the field: the clipped count
    export_bop(iter([old]), [old["__key__"]], tmp_path / "old", {mug.id: mug})
    (info_old,) = json.loads((tmp_path / "old/train/000000/scene_gt_info.json").read_text())["0"]
    assert info_old["px_count_all"] == inside and info_old["bbox_obj"][0] == 0


def test_bop_models_eval_and_scene_gt_coco(renderer, assets, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    mug = assets["mug"]
    samples = [render_sample(renderer, mug, eye=(0.3, 0.1, 0.1), hand_at=(0.0, 0.02, 0.06), frame=i) for i in range(2)]
    export_bop(iter(samples), [s["__key__"] for s in samples], tmp_path, {mug.id: mug})
    model = trimesh.load(tmp_path / "models/obj_000001.ply", process=False)
    fine = trimesh.load(tmp_path / "models_eval/obj_000001.ply", process=False)
    assert len(fine.vertices) > len(model.vertices)
    assert np.allclose(fine.bounds, model.bounds, atol=1e-3)  # same frame, same size
    diameter = json.loads((tmp_path / "models_eval/models_info.json").read_text())["1"]["diameter"]
    assert fine.edges_unique_length.max() <= diameter / 40 + 1e-6
    coco = COCO(str(tmp_path / "train/000000/scene_gt_coco.json"))
    assert sorted(coco.getImgIds()) == [0, 1]
    for im in (0, 1):
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[im]))
        assert ann["category_id"] == 1
        visib = cv2.imread(str(tmp_path / f"train/000000/mask_visib/{im:06d}_000000.png"), -1) > 0
        assert np.array_equal(coco.annToMask(ann).astype(bool), visib)


# ---------------------------------------------------------------- COCO
def test_coco_export_loads_in_pycocotools_and_scores_itself_perfectly(renderer, assets, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    mug, cam = assets["mug"], assets["camera"]
    samples = [
        render_sample(renderer, mug, eye=(0.3, 0.1, 0.12), hand_at=(0.0, 0.02, 0.07), frame=0),
        render_sample(renderer, mug, eye=(0.3, 0.1, 0.12), hand_at=(0.05, 0.0, 0.02), frame=1),
        render_sample(renderer, cam, eye=(0.25, 0.1, 0.3), hand_at=(0.02, 0.0, 0.08), frame=0),
    ]
    objects = {mug.id: mug, cam.id: cam}
    assert export_coco(iter(samples), [s["__key__"] for s in samples], tmp_path, objects) == 3
    gt = COCO(str(tmp_path / "annotations/train.json"))
    cats = {c["name"]: c for c in gt.loadCats(gt.getCatIds())}
    assert len(cats["hand"]["keypoints"]) == 21 and len(cats["hand"]["skeleton"]) == 20
    assert {"camera", "mug"} <= set(cats)
    by_key = {img["key"]: img for img in gt.loadImgs(gt.getImgIds())}
    n_kp = 0
    for sample in samples:
        img = by_key[sample["__key__"]]
        assert (tmp_path / "images/train" / img["file_name"]).is_file()
        seg = sample["seg.png"]
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=[img["id"]])):
            label = SEG_HAND if ann["category_id"] == cats["hand"]["id"] else SEG_OBJECT
            assert np.array_equal(gt.annToMask(ann).astype(bool), seg == label)
            if label == SEG_HAND:
                v = np.array(ann["keypoints"][2::3])
                vis = np.array(sample["ann.json"]["hand"]["joints_visible"])
                assert np.array_equal(v == 2, vis) and ann["num_keypoints"] == int((v > 0).sum())
                n_kp += ann["num_keypoints"]
    assert n_kp > 10
    for iou_type in ("keypoints", "segm"):
        dets = [{**a, "score": 1.0} for a in gt.loadAnns(gt.getAnnIds())]
        if iou_type == "keypoints":
            dets = [d for d in dets if d["category_id"] == cats["hand"]["id"]]
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        if iou_type == "keypoints":
            ev.params.kpt_oks_sigmas = HAND_OKS_SIGMAS
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0), iou_type


# ---------------------------------------------------------------- shards for Hugging Face datasets
def test_render_folder_loads_in_datasets_with_the_card_schema(renderer, assets, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from hoigen.data.decode import maps, wds_handler

    mug = assets["mug"]
    samples = [
        render_sample(renderer, mug, eye=(0.3, 0.1, 0.1), frame=0),
        render_sample(renderer, mug, eye=(0.3, 0.1, 0.1), hand_at=(0.5, 0.5, 0.5), frame=1),  # hand out of view
    ]
    assert samples[1]["ann.json"]["hand"]["bbox_visible"] == [0, 0, 0, 0]  # a fixed shape, not null
    out = tmp_path / "render"
    out.mkdir()
    write_shard(out / "shard-000000.tar", samples[:1])
    write_shard(out / "shard-000001.tar", samples[1:])
    write_run_json(out, "render", {"size": SIZE}, 0, {"shards": 2, "hand_model": {"name": "x", "embedded": True}})
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: ") and "task_categories:" in card and "dataset_info:" in card
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 2
    assert ds.features["ann.json"]["object"]["silhouette"]["px_count"].dtype == "int64"
    rows = sorted(ds, key=lambda r: r["__key__"])
    for row, sample in zip(rows, samples, strict=True):
        assert row["ann.json"]["hand"]["bbox_visible"] == sample["ann.json"]["hand"]["bbox_visible"]
        m = maps(row)
        assert m["depth_mm"].dtype == np.uint16 and np.array_equal(m["depth_mm"], sample["depth.png"])
        assert np.array_equal(m["seg"], sample["seg.png"])
    # webdataset with the handler keeps the 16 bits
    import webdataset as wds

    got = next(iter(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False).decode(wds_handler)))
    assert got["depth.png"].dtype == np.uint16 and np.array_equal(got["depth.png"], samples[0]["depth.png"])
