"""Exports of a multi-object scene list every object instance (issue 21): the grasped mug, a camera and a
bowl on a table, a box as the hand, rendered by the renderer with ``SceneSpec.extras`` and annotated as
the render stage does (``ann.json`` ``instances`` and ``table``). Each format is read back the way its
field reads it: the NOCS release's loader logic (mask ids against ``_meta.txt`` lines, sizes from
``bbox.txt``), bop_toolkit's ``calc_gt_info`` arithmetic on the depth images, and ``pycocotools``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import trimesh

from hoigen.data.contract import (
    SEG_HAND,
    SEG_OBJECT,
    SEG_TABLE,
    amodal_masks,
    distractor_seg_id,
    sample_instances,
)
from hoigen.data.schema import sample_key
from hoigen.errors import HoigenError
from hoigen.export.bop import export_bop
from hoigen.export.coco import HAND_CATEGORY, export_coco
from hoigen.export.common import mesh_to_cam
from hoigen.export.nocs import NOCS_CLASS_IDS, export_nocs, load_model_obj
from hoigen.objects import procedural_objects
from hoigen.render.cameras import Camera, intrinsics, look_at, pixel_rays
from hoigen.render.renderer import Instance, SceneSpec
from hoigen.render.silhouette import silhouette

SIZE = 96
FAR = np.array([[0, 0, 5.0], [0.001, 0, 5.0], [0, 0.001, 5.0]])  # a "hand" out of sight


def _renderer():
    from hoigen.render.stage import _renderer as cached

    return cached(SIZE, SIZE)


def _resting(asset, yaw: float, x: float, z: float) -> np.ndarray:
    """Mesh -> world pose standing the asset on the plane y = 0 at (x, z), turned by ``yaw`` about y."""
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    pose[:3, 3] = [x, -float(asset.mesh.bounds[0][1]), z]
    return pose


@pytest.fixture(scope="module")
def assets() -> dict:
    return {a.category: a for a in procedural_objects(["mug", "camera", "bowl"])}


def scene_sample(assets: dict, frame: int = 0, hand_at=(0.015, 0.05, 0.06)) -> tuple[dict, dict]:
    """(sample, truth): one render sample of the three-object scene with render's ann.json ``instances`` and
    ``table``; ``truth`` holds each instance's mask and depth when drawn alone (seg id -> (mask, depth_m))."""
    from hoigen.render.stage import _rendered_sample

    mug, cam_obj, bowl = assets["mug"], assets["camera"], assets["bowl"]
    camera = Camera(intrinsics(SIZE, SIZE, 60.0), look_at(np.array([0.04, 0.3, 0.4]), np.array([0.0, 0.03, 0.0])),
                    SIZE, SIZE)  # fmt: skip
    table = trimesh.creation.box(extents=(0.6, 0.02, 0.5))
    table_pose = np.eye(4)
    table_pose[1, 3] = -0.01  # top at y = 0
    placed = [  # (asset, seg id, pose): the grasped object first, then the distractors
        (mug, SEG_OBJECT, _resting(mug, 0.3, 0.0, 0.0)),
        (cam_obj, distractor_seg_id(0), _resting(cam_obj, 0.5, 0.13, -0.03)),
        (bowl, distractor_seg_id(5), _resting(bowl, 0.0, -0.12, 0.04)),  # id 9: a uint16 amodal.png
    ]
    hand = trimesh.creation.box(extents=(0.025, 0.06, 0.02))
    hand_v = np.asarray(hand.vertices) + np.asarray(hand_at)
    joints = np.asarray(hand_at) + np.linspace(-0.025, 0.025, 21)[:, None] * np.array([0.0, 1.0, 0.0])
    extras = (Instance(table, table_pose, SEG_TABLE, None, mesh_key="table"),) + tuple(
        Instance(a.mesh, pose, seg_id, a.nocs_from_mesh, mesh_key=("t", a.id)) for a, seg_id, pose in placed[1:]
    )
    spec = SceneSpec(hand_v, np.asarray(hand.faces), mug.mesh, placed[0][2], mug.nocs_from_mesh, camera, joints,
                     mesh_key=("t", mug.id), extras=extras)  # fmt: skip
    r = _renderer()
    res = r.render(spec)
    key = sample_key(mug.id, 0, frame, 0)
    boxes = res.instance_boxes()
    instances = [
        {
            "seg_id": seg_id,
            "role": "grasped" if seg_id == SEG_OBJECT else "distractor",
            "id": a.id,
            "category": a.category,
            "mesh_sha256": a.sha256,
            "pose": pose.tolist(),
            "nocs_from_mesh": a.nocs_from_mesh.tolist(),
            **{k: v or [0, 0, 0, 0] if k.startswith("bbox") else v for k, v in boxes[seg_id].items()},
        }
        for a, seg_id, pose in placed
    ]
    ann = {
        "key": key,
        "hand": {"side": "right", "model": "test-box", "global_orient": [0.0] * 3, "hand_pose": [0.0] * 45,
                 "betas": [0.0] * 10, "transl": [0.0] * 3, "joints3d": joints.tolist()},
        "object": {"id": mug.id, "category": mug.category, "mesh_sha256": mug.sha256, "pose": placed[0][2].tolist(),
                   "nocs_from_mesh": mug.nocs_from_mesh.tolist()},
        "trajectory": {"frame": frame, "frames": 4},
        "instances": instances,
        "table": {"seg_id": SEG_TABLE, "height": 0.0, "size": [0.6, 0.5]},
    }  # fmt: skip
    full = silhouette(mug.mesh.vertices, mug.mesh.faces, camera.world_to_cam @ placed[0][2], camera.K,
                      res.mask_object_full, r.znear)  # fmt: skip
    sample = _rendered_sample(key, ann, res, 0, "random", SimpleNamespace(seen=1.0), full)
    sample["ann.json"].update(instances=instances, table=ann["table"])  # render's records of this hand-made scene
    truth = {}
    for a, seg_id, pose in placed:
        alone = r.render(SceneSpec(FAR, np.array([[0, 1, 2]]), a.mesh, pose, a.nocs_from_mesh, camera,
                                   np.repeat(FAR[:1], 21, 0), mesh_key=("t", a.id)))  # fmt: skip
        truth[seg_id] = (alone.mask_object_full, alone.depth_m)
    return sample, truth


@pytest.fixture(scope="module")
def scene(assets: dict) -> dict:
    sample, truth = scene_sample(assets)
    return {"sample": sample, "truth": truth, "objects": {a.id: a for a in assets.values()}}


def test_the_scene_shows_every_instance_the_table_and_the_hand(scene: dict) -> None:
    seg = scene["sample"]["seg.png"]
    ids = [i["seg_id"] for i in scene["sample"]["ann.json"]["instances"]]
    for seg_id in (SEG_HAND, SEG_TABLE, *ids):
        assert (seg == seg_id).sum() > 30, seg_id
    assert scene["sample"]["amodal.png"].dtype == np.uint16
    masks = amodal_masks(scene["sample"]["amodal.png"])
    for seg_id in ids:  # the renderer's amodal masks are each object drawn alone
        assert np.array_equal(masks[seg_id], scene["truth"][seg_id][0])
    assert ((seg == SEG_HAND) & masks[SEG_OBJECT]).sum() > 10  # the hand hides part of the mug


def test_sample_instances_reads_old_annotations_as_one_object(scene: dict) -> None:
    ann = scene["sample"]["ann.json"]
    assert [i["seg_id"] for i in sample_instances(ann)] == [SEG_OBJECT, distractor_seg_id(0), distractor_seg_id(5)]
    old = {k: v for k, v in ann.items() if k not in ("instances", "table")}
    (one,) = sample_instances(old)
    assert one["seg_id"] == SEG_OBJECT and one["role"] == "grasped" and one["id"] == ann["object"]["id"]
    assert one["pose"] == ann["object"]["pose"] and one["bbox_visible"] == ann["object"]["bbox_visible"]
    assert one["category"] == "mug" and one["bbox"] == ann["instances"][0]["bbox"]


# ---------------------------------------------------------------- NOCS
def release_load(root: Path, split: str, stem: Path) -> dict:
    """One image read the way the NOCS release's ``load_mask``/``process_data`` does: meta lines give
    {inst_id: cls_id} and (line inst_id - 1) the size from ``bbox.txt``; mask ids 255 = background;
    instances of class 0 or without a pixel in the mask are dropped."""
    lines = [line[:-1].split(" ") for line in open(f"{stem}_meta.txt")]
    inst_dict = {int(w[0]): int(w[1]) for w in lines}
    scale = np.array([np.subtract(*np.loadtxt(root / "obj_models" / split / w[2] / w[3] / "bbox.txt")) for w in lines])
    cdata = cv2.imread(f"{stem}_mask.png")[:, :, 2].astype(np.int32)
    ids = sorted(np.unique(cdata))
    assert ids[-1] == 255
    del ids[-1]
    cdata[cdata == 255] = -1
    assert len(np.unique(cdata)) < 20
    coord = cv2.imread(f"{stem}_coord.png")[:, :, :3][:, :, (2, 1, 0)].astype(np.float32) / 255
    coord[:, :, 2] = 1 - coord[:, :, 2]
    out: dict = {"ids": [], "class_ids": [], "masks": [], "coords": [], "scales": [], "lines": lines}
    for inst_id in ids:
        if inst_dict.get(inst_id, 0) == 0:
            continue
        mask = cdata == inst_id
        out["ids"].append(inst_id)
        out["class_ids"].append(inst_dict[inst_id])
        out["masks"].append(mask)
        out["coords"].append(coord * mask[..., None])
        out["scales"].append(scale[inst_id - 1])
    return out


def backproject(sample: dict, mask: np.ndarray) -> np.ndarray:
    """Camera-frame points (metres) of the depth map's pixels in ``mask``."""
    cam = sample["ann.json"]["camera"]
    rays = pixel_rays(np.asarray(cam["K"]), cam["width"], cam["height"])
    return rays[mask] * (sample["depth.png"][mask] / 1000.0)[:, None]


def test_nocs_lists_every_instance_consistently(scene: dict, tmp_path: Path) -> None:
    sample, objects = scene["sample"], scene["objects"]
    insts = sample["ann.json"]["instances"]
    export_nocs(iter([sample]), [sample["__key__"]], tmp_path, objects)
    stem = tmp_path / "train/00000/0000"
    got = release_load(tmp_path, "train", stem)
    assert [line[0] for line in got["lines"]] == ["1", "2", "3"]
    assert [line[3] for line in got["lines"]] == [i["id"] for i in insts]
    assert got["ids"] == [1, 2, 3]  # every instance visible and of a NOCS class: the loader keeps all three
    assert got["class_ids"] == [NOCS_CLASS_IDS[c] for c in ("mug", "camera", "bowl")]
    seg = sample["seg.png"]
    mask = cv2.imread(f"{stem}_mask.png", -1)
    assert np.all(mask[np.isin(seg, (0, SEG_HAND, SEG_TABLE))] == 255)  # hand and table are not instances
    gt = pickle.loads((tmp_path / "gts/train/results_train_00000_0000.pkl").read_bytes())
    assert list(gt["gt_class_ids"]) == got["class_ids"] and gt["gt_RTs"].shape == (3, 4, 4)
    for n, inst in enumerate(insts):
        m = got["masks"][n]
        assert np.array_equal(m, seg == inst["seg_id"]) and m.sum() > 30
        # the loader's size (bbox.txt) is the gt size; the model read the release's way fits it
        model = tmp_path / "obj_models/train" / got["lines"][n][2] / inst["id"] / "model.obj"
        v = load_model_obj(model)
        assert np.allclose(got["scales"][n], v.max(0) - v.min(0), atol=1e-5)
        assert np.allclose(gt["gt_scales"][n], got["scales"][n], atol=1e-5)
        # this instance's coord map, carried by its gt pose, lands on the depth map's surface
        nocs = got["coords"][n][m] - 0.5
        rt = gt["gt_RTs"][n]
        cam_pts = nocs @ rt[:3, :3].T + rt[:3, 3]
        err = np.linalg.norm(cam_pts - backproject(sample, m), axis=1)
        assert np.median(err) < 0.002 and np.percentile(err, 95) < 0.005, (inst["id"], np.median(err))
        ys, xs = np.nonzero(m)
        assert list(gt["gt_bboxes"][n]) == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
    gts = json.loads((tmp_path / "gts/train.json").read_text())["images"]["train/00000/0000"]
    assert [g["model"] for g in gts] == [i["id"] for i in insts]
    assert json.loads((tmp_path / "classes.json").read_text())["bowl"] == 2


def test_nocs_meta_keeps_hidden_instances_the_loader_drops(scene: dict, assets: dict, tmp_path: Path) -> None:
    sample = json.loads(json.dumps(scene["sample"]["ann.json"]))  # a copy of the annotation
    hidden = {**scene["sample"], "ann.json": sample, "seg.png": scene["sample"]["seg.png"].copy()}
    hidden["seg.png"][hidden["seg.png"] == distractor_seg_id(0)] = SEG_TABLE  # the camera fully hidden
    export_nocs(iter([hidden]), [hidden["__key__"]], tmp_path, scene["objects"])
    got = release_load(tmp_path, "train", tmp_path / "train/00000/0000")
    assert len(got["lines"]) == 3 and got["ids"] == [1, 3]  # listed in meta, dropped by the loader
    assert got["scales"][1].shape == (3,)  # line 3 -> the bowl's size
    gt = pickle.loads((tmp_path / "gts/train/results_train_00000_0000.pkl").read_bytes())
    assert list(gt["gt_class_ids"]) == [NOCS_CLASS_IDS["mug"], NOCS_CLASS_IDS["bowl"]]
    assert (tmp_path / "obj_models/train/02942699" / assets["camera"].id / "bbox.txt").exists()


# ---------------------------------------------------------------- BOP
def _ply_vertices(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    n = int(next(line for line in lines if line.startswith("element vertex")).split()[-1])
    start = lines.index("end_header") + 1
    return np.array([[float(x) for x in row.split()[:3]] for row in lines[start : start + n]])


def _dist_im(depth_mm: np.ndarray, K: np.ndarray) -> np.ndarray:
    """bop_toolkit's ``depth_im_to_dist_im``: distance from the optical centre instead of z."""
    h, w = depth_mm.shape
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    return depth_mm * np.sqrt(((xs - K[0, 2]) / K[0, 0]) ** 2 + ((ys - K[1, 2]) / K[1, 1]) ** 2 + 1)


def test_bop_lists_every_instance_with_its_own_visibility(scene: dict, tmp_path: Path) -> None:
    sample, objects, truth = scene["sample"], scene["objects"], scene["truth"]
    ann = sample["ann.json"]
    insts = ann["instances"]
    export_bop(iter([sample]), [sample["__key__"]], tmp_path, objects)
    folder = tmp_path / "train/000000"
    names = json.loads((tmp_path / "models/objects.json").read_text())
    gts = json.loads((folder / "scene_gt.json").read_text())["0"]
    infos = json.loads((folder / "scene_gt_info.json").read_text())["0"]
    assert [names[str(g["obj_id"])]["id"] for g in gts] == [i["id"] for i in insts]  # the table is no object
    models_info = json.loads((tmp_path / "models/models_info.json").read_text())
    assert sorted(models_info) == sorted(str(g["obj_id"]) for g in gts)
    K = np.asarray(ann["camera"]["K"])
    depth = cv2.imread(str(folder / "depth/000000.png"), -1).astype(np.float64)
    dist_im = _dist_im(depth, K)
    seg = sample["seg.png"]
    for gt_id, (g, info, inst) in enumerate(zip(gts, infos, insts, strict=True)):
        for sub in ("models", "models_eval"):
            assert (tmp_path / sub / f"obj_{g['obj_id']:06d}.ply").is_file()
        # the model in its BOP frame, carried by cam_R_m2c / cam_t_m2c, is the instance in the camera (< 1 mm)
        verts = _ply_vertices(tmp_path / f"models/obj_{g['obj_id']:06d}.ply")
        R, t = np.reshape(g["cam_R_m2c"], (3, 3)), np.asarray(g["cam_t_m2c"])
        m2c = mesh_to_cam(ann, inst)
        asset = objects[inst["id"]]
        truth_mm = (asset.mesh.vertices @ m2c[:3, :3].T + m2c[:3, 3]) * 1000
        assert np.abs(verts @ R.T + t - truth_mm).max() < 1.0, inst["id"]
        full = cv2.imread(str(folder / f"mask/000000_{gt_id:06d}.png"), -1) > 0
        visib = cv2.imread(str(folder / f"mask_visib/000000_{gt_id:06d}.png"), -1) > 0
        alone, alone_depth = truth[inst["seg_id"]]
        assert np.array_equal(full, alone) and np.array_equal(visib, seg == inst["seg_id"])
        assert not (visib & np.isin(seg, (SEG_HAND, SEG_TABLE))).any()
        # calc_gt_info's arithmetic on the depth images (bop19 visibility, delta 15 mm): this instance drawn
        # alone against the scene's depth (the reader itself was not run: bop_toolkit is not on PyPI)
        dist_gt = _dist_im(np.round(alone_depth * 1000), K)
        visib_gt = ((dist_gt - dist_im <= 15) | (dist_im == 0)) & (dist_gt > 0)
        all_px = int((dist_gt > 0).sum())  # inside the image: every instance here is wholly in view
        assert info["px_count_all"] == all_px == int(full.sum())
        assert info["px_count_valid"] == int((dist_im[dist_gt > 0] > 0).sum())
        assert abs(info["px_count_visib"] - int(visib_gt.sum())) <= 0.05 * all_px, inst["id"]
        assert info["visib_fract"] == pytest.approx(visib_gt.sum() / all_px, abs=0.05)
        assert info["visib_fract"] == pytest.approx(info["px_count_visib"] / info["px_count_all"], abs=1e-6)
        ys, xs = np.nonzero(visib)
        assert info["bbox_visib"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert min(i["visib_fract"] for i in infos) < 0.9  # the hand and the bowl hide part of the mug
    from pycocotools.coco import COCO

    coco = COCO(str(folder / "scene_gt_coco.json"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[0]))
    assert [a["category_id"] for a in anns] == [g["obj_id"] for g in gts]
    for a, inst in zip(anns, insts, strict=True):
        assert np.array_equal(coco.annToMask(a).astype(bool), seg == inst["seg_id"])


# ---------------------------------------------------------------- COCO
def test_coco_has_one_annotation_per_instance_and_the_hand(scene: dict, assets: dict, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    hidden_hand, _ = scene_sample(assets, frame=1, hand_at=(0.5, 0.5, 0.5))  # the hand out of view
    samples = [scene["sample"], hidden_hand]
    assert export_coco(iter(samples), [s["__key__"] for s in samples], tmp_path, scene["objects"]) == 2
    gt = COCO(str(tmp_path / "annotations/train.json"))
    cats = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    assert sorted(cats.values()) == ["bowl", "camera", "hand", "mug"]  # one per class; no table
    by_key = {img["key"]: img for img in gt.loadImgs(gt.getImgIds())}
    for sample in samples:
        seg = sample["seg.png"]
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[by_key[sample["__key__"]]["id"]]))
        hands = [a for a in anns if a["category_id"] == HAND_CATEGORY]
        objs = [a for a in anns if a["category_id"] != HAND_CATEGORY]
        assert len(hands) == int((seg == SEG_HAND).any())
        insts = sample["ann.json"]["instances"]
        assert [cats[a["category_id"]] for a in objs] == [i["category"] for i in insts]
        assert [a["object_id"] for a in objs] == [i["id"] for i in insts]
        for a, inst in zip(objs, insts, strict=True):
            mask = gt.annToMask(a).astype(bool)
            assert np.array_equal(mask, seg == inst["seg_id"]) and a["area"] == int(mask.sum()) == inst["px_visible"]
        union = np.logical_or.reduce([gt.annToMask(a).astype(bool) for a in anns])
        assert not (union & (seg == SEG_TABLE)).any()
    dets = [{**a, "score": 1.0} for a in gt.loadAnns(gt.getAnnIds())]
    ev = COCOeval(gt, gt.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- one code path for old and new samples
def test_a_one_instance_list_exports_the_same_bytes_as_an_old_sample(tmp_path: Path) -> None:
    """An old single-object sample and the same sample with an ``instances`` list of its one object give
    byte-identical NOCS, BOP and COCO exports."""
    import test_export_formats as tf

    mug = procedural_objects(["mug"])[0]
    old = tf.render_sample(_renderer(), mug, eye=(0.3, 0.1, 0.12), hand_at=(0.0, 0.02, 0.07))
    new = {**old, "ann.json": {**old["ann.json"], "instances": sample_instances(old["ann.json"]), "table": None}}
    for fmt, writer in (("nocs", export_nocs), ("bop", export_bop), ("coco", export_coco)):
        for name, sample in (("old", old), ("new", new)):
            writer(iter([sample]), [sample["__key__"]], tmp_path / name / fmt, {mug.id: mug})
    files = sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*") if p.is_file())
    assert len(files) > 20
    assert files == sorted(p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "old" / rel).read_bytes() == (tmp_path / "new" / rel).read_bytes(), rel


def test_bad_instances_are_one_line_errors(scene: dict, tmp_path: Path) -> None:
    sample = scene["sample"]
    for change, message in (
        (lambda a: a["instances"][1].update(id="teapot-404"), "teapot-404.*not in objects.parquet"),
        (lambda a: a["instances"][2].update(seg_id=SEG_TABLE), "seg_id 3"),
        (lambda a: a["instances"][2].update(seg_id=distractor_seg_id(0)), "each once"),
        (lambda a: a.update(instances=[]), "empty"),
    ):
        ann = json.loads(json.dumps(sample["ann.json"]))
        change(ann)
        bad = {**sample, "ann.json": ann}
        for writer in (export_nocs, export_bop, export_coco):
            with pytest.raises(HoigenError, match=message):
                writer(iter([bad]), [bad["__key__"]], tmp_path / "out", scene["objects"])
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_bop_takes_an_instances_whole_silhouette_when_render_gives_one(scene: dict, tmp_path: Path) -> None:
    """A distractor with a ``silhouette`` record (the unclipped count, as ``object.silhouette``) is counted
    by it; without one, by its amodal mask inside the image."""
    ann = json.loads(json.dumps(scene["sample"]["ann.json"]))
    cam_px = ann["instances"][1]["px_full"]
    ann["instances"][1]["silhouette"] = {"px_count": 2 * cam_px, "bbox": [-20, 30, 80, 53]}
    sample = {**scene["sample"], "ann.json": ann}
    export_bop(iter([sample]), [sample["__key__"]], tmp_path, scene["objects"])
    infos = json.loads((tmp_path / "train/000000/scene_gt_info.json").read_text())["0"]
    assert infos[1]["px_count_all"] == 2 * cam_px and infos[1]["bbox_obj"] == [-20, 30, 100, 23]
    assert infos[1]["visib_fract"] == pytest.approx(infos[1]["px_count_visib"] / (2 * cam_px), abs=1e-6)
    assert infos[2]["px_count_all"] == ann["instances"][2]["px_full"]  # the bowl: no record, the amodal mask
