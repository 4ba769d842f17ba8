"""A three-object scene end to end through ``hoigen render`` (tiny size): instance ids against the geometry,
NOCS per instance, no interpenetration, boxes against masks, ``hoigen validate``, the objects folder for
library distractors, and old single-object shards still read by synthesize and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clirun import run_hoigen as hoigen

from hoigen.data.contract import (
    SEG_HAND,
    SEG_OBJECT,
    SEG_TABLE,
    amodal_masks,
    ann_problems,
    decode_depth,
    decode_nocs,
    objects_dir_of,
    sample_instances,
)
from hoigen.data.shards import ShardWriter, list_shards, read_shard
from hoigen.objects import read_objects
from hoigen.objects.geometry import contains, sample_surface, signed_distance
from hoigen.render.annotate import mask_bbox
from hoigen.render.placement import TABLE_THICKNESS

SIZE = 96

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """grasp (a mug and a can, one grasp, three frames) -> render with two distractors: the can from the
    grasp folder and one from the embedded library (the grasp folder has only one other object)."""
    root = tmp_path_factory.mktemp("scene")
    code, _ = hoigen("grasp", "--out", root / "grasp", "--grasps", 1, "--frames", 3, "--categories", "mug,can", "-q")
    assert code == 0
    code, _ = hoigen(
        "render", "--in", root / "grasp", "--out", root / "render", "--size", SIZE, "--views", 1, "--distractors", 2,
        "-q",
    )  # fmt: skip
    assert code == 0
    samples = [s for shard in list_shards(root / "render") for s in read_shard(shard)]
    assert len(samples) == 6
    return root / "grasp", root / "render", samples


def _world_points(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel with depth back-projected to the world: (H*W, 3) points and the (H*W,) valid flags."""
    ann = sample["ann.json"]
    K, w2c = np.asarray(ann["camera"]["K"]), np.asarray(ann["camera"]["world_to_cam"])
    z = decode_depth(sample["depth.png"]).reshape(-1)
    v, u = np.mgrid[0:SIZE, 0:SIZE]
    cam = np.stack([(u.reshape(-1) - K[0, 2]) / K[0, 0] * z, (v.reshape(-1) - K[1, 2]) / K[1, 1] * z, z], axis=1)
    c2w = np.linalg.inv(w2c)
    return cam @ c2w[:3, :3].T + c2w[:3, 3], z > 0


def _meshes(render: Path, ann: dict) -> dict[int, object]:
    """seg id -> the instance's mesh in the world (meshes found through the render folder's objects)."""
    objects = read_objects(objects_dir_of(render))
    out = {}
    for inst in sample_instances(ann):
        asset = objects[inst["id"]]
        assert asset.sha256 == inst["mesh_sha256"]
        out[inst["seg_id"]] = asset.mesh.copy().apply_transform(np.asarray(inst["pose"]))
    return out


def test_instances_and_table_in_ann(scene) -> None:
    grasp, render, samples = scene
    for s in samples:
        ann = s["ann.json"]
        assert list(ann_problems(ann, s["__key__"], "render")) == []
        inst = ann["instances"]
        assert [i["seg_id"] for i in inst] == [SEG_OBJECT, 4, 5]
        assert [i["role"] for i in inst] == ["grasped", "distractor", "distractor"]
        assert inst[0]["id"] == ann["object"]["id"] and inst[0]["pose"] == ann["object"]["pose"]
        others = {"mug-000", "can-000"} - {ann["object"]["id"]}
        assert inst[1]["id"] in others  # the grasp folder's other object comes before the library
        assert inst[2]["id"].startswith("distractor-")
        assert ann["table"]["seg_id"] == SEG_TABLE and ann["table"]["size"] == [1.2, 0.8]
        assert set(np.unique(s["seg.png"])) <= {0, SEG_HAND, SEG_OBJECT, SEG_TABLE, 4, 5}
        assert (s["seg.png"] == SEG_TABLE).any()
    # the render folder holds its own objects (the grasp's plus the library), and run.json points to it
    run = json.loads((render / "run.json").read_text())
    assert Path(run["objects_dir"]) == render.resolve() == objects_dir_of(render)
    assert Path(run["config"]["objects_dir"]) == grasp.resolve()  # the fingerprint names no output folder
    assert len(run["config"]["distractor_library"]) == 12
    assert set(read_objects(grasp)) < set(read_objects(render))


def test_depth_back_projection_lands_on_the_labelled_instance(scene) -> None:
    _, render, samples = scene
    for s in samples:
        ann = s["ann.json"]
        points, valid = _world_points(s)
        seg = s["seg.png"].reshape(-1)
        meshes = _meshes(render, ann)
        dist = {k: np.abs(signed_distance(m, points[valid])) for k, m in meshes.items()}
        labels = seg[valid]
        for seg_id in meshes:
            mine = labels == seg_id
            if not mine.any():
                continue
            assert dist[seg_id][mine].max() < 0.002, (s["__key__"], seg_id)  # within depth's millimetre rounding
            nearest = np.min([d[mine] for d in dist.values()], axis=0)
            assert (dist[seg_id][mine] <= nearest + 0.001).all()  # no other instance is nearer
        table = labels == SEG_TABLE
        y = points[valid][table, 1] - ann["table"]["height"]
        assert (y < 0.002).all() and (y > -TABLE_THICKNESS - 0.002).all()  # on the table box (its top or side)
        assert (np.abs(y) < 0.002).mean() > 0.9  # mostly its top
        assert (np.min([d[table] for d in dist.values()], axis=0) > 0.0005).mean() > 0.95  # not on an object


def test_nocs_per_instance(scene) -> None:
    _, render, samples = scene
    objects = read_objects(objects_dir_of(render))
    checked = set()
    for s in samples:
        points, valid = _world_points(s)
        seg, nocs = s["seg.png"].reshape(-1), decode_nocs(s["nocs.png"]).reshape(-1, 3)
        raw = s["nocs.png"].reshape(-1, 3)
        assert not raw[np.isin(seg, [0, SEG_HAND, SEG_TABLE])].any()  # NOCS only on object instances
        for inst in s["ann.json"]["instances"]:
            mine = (seg == inst["seg_id"]) & valid
            if mine.sum() < 5:
                continue
            pose, n_from_m = np.asarray(inst["pose"]), np.asarray(inst["nocs_from_mesh"])
            assert np.allclose(n_from_m, objects[inst["id"]].nocs_from_mesh)
            local = (points[mine] - pose[:3, 3]) @ pose[:3, :3]
            expected = local @ n_from_m[:3, :3].T + n_from_m[:3, 3]
            assert np.abs(nocs[mine] - expected).max() < 0.02, (s["__key__"], inst["seg_id"])
            checked.add(inst["seg_id"])
    assert checked == {SEG_OBJECT, 4, 5}


def test_placed_objects_do_not_interpenetrate_and_keep_off_the_hand(scene) -> None:
    from hoigen.hand import load_hand

    _, render, samples = scene
    rng = np.random.default_rng(0)
    by_grasp: dict[str, list[dict]] = {}
    for s in samples:
        by_grasp.setdefault(s["ann.json"]["object"]["id"], []).append(s["ann.json"])
    for anns in by_grasp.values():
        meshes = _meshes(render, anns[0])
        for k, mesh in meshes.items():
            points, _ = sample_surface(mesh, 2000, rng)
            for j, other in meshes.items():
                if j != k:
                    assert not contains(other, points).any(), (k, j)
            if k != SEG_OBJECT:  # distractors stand on the table top
                assert mesh.vertices[:, 1].min() == pytest.approx(anns[0]["table"]["height"], abs=1e-5)
        for ann in anns:  # the hand of every frame stays out of every distractor
            hand_ann = ann["hand"]
            hand = load_hand(hand_ann["side"], None)
            vertices = hand.forward(
                *(np.asarray(hand_ann[k]) for k in ("global_orient", "hand_pose", "betas", "transl"))
            ).vertices[0]
            for k, mesh in meshes.items():
                if k != SEG_OBJECT:
                    assert not contains(mesh, vertices).any()
                    assert np.abs(signed_distance(mesh, vertices)).min() > 0.005


def test_instance_boxes_match_the_masks(scene) -> None:
    _, _, samples = scene
    for s in samples:
        full = amodal_masks(s["amodal.png"])
        assert s["amodal.png"].dtype == np.uint8 and SEG_TABLE in full
        for inst in s["ann.json"]["instances"]:  # tight framing (--fill) may leave a distractor out of view
            full.setdefault(inst["seg_id"], np.zeros(s["seg.png"].shape, bool))
            visible = s["seg.png"] == inst["seg_id"]
            assert inst["bbox_visible"] == (mask_bbox(visible) or [0, 0, 0, 0])
            assert inst["px_visible"] == int(visible.sum())
            assert inst["bbox"] == (mask_bbox(full[inst["seg_id"]]) or [0, 0, 0, 0])
            assert inst["px_full"] == int(full[inst["seg_id"]].sum())
            assert not (visible & ~full[inst["seg_id"]]).any()


def test_validate_passes_and_catches_a_bad_instance(scene, capsys) -> None:
    _, render, samples = scene
    code, err = hoigen("validate", render, capsys=capsys)
    assert code == 0, err
    ann = json.loads(json.dumps(samples[0]["ann.json"]))
    ann["instances"][1]["seg_id"] = 3
    ann["instances"][2]["px_visible"] = ann["instances"][2]["px_full"] + 1
    ann["table"]["size"] = [1.2, -1]
    problems = list(ann_problems(ann, samples[0]["__key__"], "render"))
    assert any("instances[1].seg_id" in p for p in problems)
    assert any("instances[2] px_visible" in p for p in problems)
    assert any("table.size" in p for p in problems)


def test_many_distractors_widen_amodal_to_16_bits(scene, tmp_path, capsys) -> None:
    from hoigen.data.codec import encode_field
    from hoigen.data.validate import check_sample

    grasp, _, _ = scene
    code, err = hoigen("render", "--in", grasp, "--out", tmp_path / "r", "--size", 32, "--views", 1,
                       "--distractors", 7, "-q", capsys=capsys)  # fmt: skip
    assert code == 0, err
    code, err = hoigen("validate", tmp_path / "r", capsys=capsys)
    assert code == 0, err
    s = next(read_shard(list_shards(tmp_path / "r")[0]))
    ids = [i["seg_id"] for i in s["ann.json"]["instances"]]
    assert len(ids) > 5 and max(ids) > 8  # more than five distractors placed: bits past 8
    assert s["amodal.png"].dtype == np.uint16
    full = amodal_masks(s["amodal.png"])
    assert all(full.get(i, np.zeros(1, bool)).sum() == inst["px_full"]
                                         for i, inst in zip(ids, s["ann.json"]["instances"], strict=True))
    s["ann.json"]["instances"] = s["ann.json"]["instances"][:2]  # seg.png now holds unnamed ids
    raw = {k: v if k.startswith("__") else encode_field(k, v) for k, v in s.items()}
    problems = list(check_sample(raw, "render"))
    assert any("seg.png holds ids" in p for p in problems) and any("amodal.png" in p for p in problems)


def test_no_table_and_usage_errors(scene, tmp_path, capsys) -> None:
    grasp, _, _ = scene
    code, err = hoigen("render", "--in", grasp, "--out", tmp_path / "x", "--no-table", "--distractors", 1,
                       capsys=capsys)  # fmt: skip
    assert code == 2 and "--distractors" in err and "--no-table" in err and err.count("\n") == 1, err
    code, err = hoigen("render", "--in", grasp, "--out", tmp_path / "x", "--distractors", 14, capsys=capsys)
    assert code == 2 and "--distractors" in err, err
    code, err = hoigen("render", "--in", grasp, "--out", tmp_path / "f", "--size", 48, "--views", 1, "--no-table",
                       "--distractors", 0, "-q", capsys=capsys)  # fmt: skip
    assert code == 0, err
    for s in (s for shard in list_shards(tmp_path / "f") for s in read_shard(shard)):
        ann = s["ann.json"]
        assert ann["table"] is None and [i["seg_id"] for i in ann["instances"]] == [SEG_OBJECT]
        assert set(np.unique(s["seg.png"])) <= {0, SEG_HAND, SEG_OBJECT}
    run = json.loads((tmp_path / "f" / "run.json").read_text())
    assert Path(run["config"]["objects_dir"]) == grasp.resolve()  # no library: the grasp folder's objects


def test_old_single_object_shards_still_read(scene, tmp_path, capsys) -> None:
    """Shards from before scenes (no instances, no table, seg ids 0/1/2) go through synthesize and export."""
    grasp, _, _ = scene
    code, err = hoigen("render", "--in", grasp, "--out", tmp_path / "new", "--size", 32, "--views", 1, "--no-table",
                       "--distractors", 0, "-q", capsys=capsys)  # fmt: skip
    assert code == 0, err
    old = tmp_path / "old"
    old.mkdir()
    for shard in list_shards(tmp_path / "new"):
        with ShardWriter(old / shard.name) as writer:
            for s in read_shard(shard):
                s = {k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
                s["ann.json"] = {k: v for k, v in s["ann.json"].items() if k not in ("instances", "table")}
                assert sample_instances(s["ann.json"])[0]["seg_id"] == SEG_OBJECT
                writer.write(s)
    run = json.loads((tmp_path / "new" / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({"stage": "render", "objects_dir": run["objects_dir"]}))
    code, err = hoigen("synthesize", "--in", old, "--out", tmp_path / "synth", "--steps", 1, "--size", 32, "-q",
                       capsys=capsys)  # fmt: skip
    assert code == 0, err
    for fmt in ("nocs", "coco"):
        code, err = hoigen("export", "--in", tmp_path / "synth", "--out", tmp_path / fmt, "--format", fmt, "-q",
                           capsys=capsys)  # fmt: skip
        assert code == 0, err


def test_crop_and_conditions_centre_on_hand_and_grasped_object(scene) -> None:
    from hoigen.diffusion import controls
    from hoigen.diffusion.conditions import SEG_OBJECT_RGB, SEG_TABLE_RGB, seg_to_rgb
    from hoigen.geometry.crop import hoi_box

    _, _, samples = scene
    s = max(samples, key=lambda s: (s["seg.png"] >= 4).sum())
    seg = s["seg.png"]
    box = hoi_box(seg)
    ys, xs = np.nonzero(np.isin(seg, [SEG_HAND, SEG_OBJECT]))
    assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # the table and distractors stay out of the crop
    rgb = seg_to_rgb(seg)
    assert (rgb[seg == SEG_TABLE] == SEG_TABLE_RGB).all() and (rgb[seg == SEG_OBJECT] == SEG_OBJECT_RGB).all()
    ade = controls.condition_map(s, "seg", "controlnet", SIZE)
    assert (ade[seg == SEG_TABLE] == controls.ade_colour("table")).all()
    for inst in s["ann.json"]["instances"]:
        want = controls.ade_colour(controls.ade_class(inst["category"]))
        assert (ade[seg == inst["seg_id"]] == want).all()
    adapter = controls.condition_map(s, "seg", "adapter", SIZE)
    assert not adapter[seg == SEG_TABLE].any() and (adapter[seg >= 4] == SEG_OBJECT_RGB).all()


def test_a_no_table_grasp_with_the_table_on_is_a_usage_error(scene, tmp_path, capsys) -> None:
    import shutil

    from hoigen.data.runner import StageContext
    from hoigen.options import UsageError
    from hoigen.render.options import RenderOptions
    from hoigen.render.stage import RenderInputs, render_stage

    grasp, _, _ = scene
    samples = [s for shard in list_shards(grasp) for s in read_shard(shard)]
    for s in samples:
        s["ann.json"]["support"] = None  # what hoigen grasp --no-table writes
    opts = RenderOptions(views=1, size=32, distractors=0)
    ctx = StageContext(stage="render", seed=0, options=opts, out_dir=tmp_path, inputs=RenderInputs(str(grasp), None))
    with pytest.raises(UsageError, match="--no-table"):
        list(render_stage(samples, ctx))
    ctx = StageContext(stage="render", seed=0, options=RenderOptions(views=1, size=32, table=False, distractors=0),
                       out_dir=tmp_path, inputs=RenderInputs(str(grasp), None))  # fmt: skip
    assert all(s["ann.json"]["table"] is None for s in render_stage(samples, ctx))
    # the run-level check: a grasp folder whose run.json records --no-table
    copy = tmp_path / "grasp"
    shutil.copytree(grasp, copy)
    run = json.loads((copy / "run.json").read_text())
    run["config"]["table"] = False
    (copy / "run.json").write_text(json.dumps(run))
    code, err = hoigen("render", "--in", copy, "--out", tmp_path / "r", capsys=capsys)
    assert code == 2 and "--no-table" in err and err.count("\n") == 1, err
