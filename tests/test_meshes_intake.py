"""Object intake a new user can trust: units, up axis, URDF and single files, readable names in
prompts, prompt comments and truncation, grasp reports and contact-sheet frames (issue 19)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh

from hoigen.errors import HoigenError
from hoigen.grasp.options import GraspOptions
from hoigen.objects import load_objects, procedural_objects, save_objects, upright_rotation
from hoigen.objects.units import choose_scale


def _load(path: Path, caplog: pytest.LogCaptureFixture, **kwargs):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hoigen.objects"):
        lib = load_objects(path, **kwargs)
    return lib, [r.getMessage() for r in caplog.records if r.name == "hoigen.objects"]


def _blob(extent: float) -> trimesh.Trimesh:
    """A duck-like ellipsoid whose largest side is ``extent`` (file units)."""
    mesh = trimesh.creation.icosphere(2, radius=1.0)
    mesh.vertices *= np.array([1.0, 0.64, 0.6]) * extent / 2
    return mesh


def _mug(scale: float = 1.0) -> trimesh.Trimesh:
    """The procedural mug (y-up, metres) times ``scale``, turned z-up as most mesh files are."""
    mug = procedural_objects(["mug"], seed=0)[0]
    return trimesh.Trimesh(mug.mesh.vertices @ upright_rotation("+z") / scale, mug.mesh.faces, process=False)


# --- units --------------------------------------------------------------------------------------


def test_a_2_5_unit_mesh_is_rescaled_to_the_typical_size_with_one_warning(tmp_path, caplog):
    _blob(2.5).export(tmp_path / "duck.obj")
    lib, lines = _load(tmp_path, caplog)
    (duck,) = lib
    assert duck.category == "object" and duck.scale_from == "auto typical size"
    assert duck.unit_scale == pytest.approx(0.15 / 2.5)
    assert float(np.ptp(duck.mesh.vertices, axis=0).max()) == pytest.approx(0.15, rel=1e-5)
    (line,) = lines
    assert line.startswith(f"{tmp_path / 'duck.obj'}: largest side 2.5 fits no unit")
    assert "rescaled by 0.06 to the typical 15 cm" in line and "--units" in line and "--scale" in line
    # objects.parquet records the factor, where it came from and the size
    save_objects(lib, tmp_path.parent / f"{tmp_path.name}-out")
    row = pq.read_table(tmp_path.parent / f"{tmp_path.name}-out" / "objects.parquet").to_pylist()[0]
    assert row["unit_scale"] == pytest.approx(0.06) and row["scale_from"] == "auto typical size"
    assert row["size_m"] == pytest.approx(0.15, rel=1e-5)
    # --units m takes the file at its word: no guess, no warning
    lib, lines = _load(tmp_path, caplog, units="m")
    assert lib[0].unit_scale == 1.0 and lib[0].scale_from == "--units m" and lines == []
    lib, lines = _load(tmp_path, caplog, scale=0.04)
    assert lib[0].unit_scale == 0.04 and float(np.ptp(lib[0].mesh.vertices, axis=0).max()) == pytest.approx(0.1)


def test_a_mug_in_inches_is_read_as_inches(tmp_path, caplog):
    inch = 0.0254
    _mug(inch).export(tmp_path / "mug.stl")
    lib, lines = _load(tmp_path, caplog)
    (mug,) = lib
    assert mug.category == "mug" and mug.scale_from == "auto in" and mug.unit_scale == inch
    ref = procedural_objects(["mug"], seed=0)[0]
    np.testing.assert_allclose(mug.mesh.extents, ref.mesh.extents, rtol=1e-5)
    (line,) = lines
    assert "read as inches, scaled by 0.0254" in line and "if that is wrong" in line


def test_unit_rule_values():
    assert choose_scale(0.12, "mug").factor == 1.0  # metres that fit: kept, no warning
    assert choose_scale(0.12, "mug").warning is None
    assert choose_scale(120.0, "mug").factor == 0.001
    assert choose_scale(12.0, "can").factor == 0.01
    assert choose_scale(4.5, "mug").factor == 0.0254
    assert choose_scale(0.04, "object").factor == 1.0  # a small object in metres stays
    assert choose_scale(30.0, "object").factor == 0.001  # a 3 cm die in millimetres
    unit_sized = choose_scale(0.9, "mug")  # a mesh normalised to about one unit
    assert unit_sized.source == "auto typical size" and unit_sized.factor == pytest.approx(0.11 / 0.9)
    assert choose_scale(2.0, "object", units="in").factor == 0.0254
    assert choose_scale(2.0, "object", units="in", scale=0.5).factor == 0.5  # --scale beats --units
    assert choose_scale(2.0, "object", scale=0.5, mapping_unit="cm").factor == 0.01  # the mapping beats both


def test_mapping_scale_and_unit_columns_and_options(tmp_path, caplog):
    _blob(2.5).export(tmp_path / "duck.obj")
    _blob(6.0).export(tmp_path / "toy.obj")
    (tmp_path / "categories.csv").write_text("id,category,up,unit,scale\nduck,object,,,0.04\ntoy,object,,in,\n")
    lib, lines = _load(tmp_path, caplog)
    by_id = {a.id: a for a in lib}
    assert by_id["duck"].unit_scale == 0.04 and by_id["duck"].scale_from == "mapping scale"
    assert by_id["toy"].unit_scale == 0.0254 and by_id["toy"].scale_from == "mapping unit in"
    assert lines == []
    (tmp_path / "categories.csv").write_text("id,category,scale\nduck,object,-1\n")
    with pytest.raises(HoigenError, match=r"categories.csv \[duck\] scale: scale must be a positive number"):
        load_objects(tmp_path)
    (tmp_path / "categories.csv").write_text("id,category,unit\nduck,object,ft\n")
    with pytest.raises(HoigenError, match=r"unit 'ft' is not one of auto, m, mm, cm, in"):
        load_objects(tmp_path)
    with pytest.raises(HoigenError, match="--units must be one of auto, m, mm, cm, in, got 'yd'"):
        GraspOptions(units="yd")
    with pytest.raises(HoigenError, match="--scale must be a positive number"):
        GraspOptions(scale=0.0)


def test_units_option_choices_are_the_units_module_s():
    """--units is declared in the options module (no object code there) and offers exactly what units.py knows."""
    from hoigen.grasp.options import MESH_UNITS
    from hoigen.objects.units import UNIT_CHOICES

    assert MESH_UNITS == UNIT_CHOICES
    assert GraspOptions(units="cm", scale=0.5).scale == 0.5


# --- up axis ------------------------------------------------------------------------------------


def test_one_default_up_axis_and_a_lying_mug_warns_once(tmp_path, caplog):
    standing = tmp_path / "standing"
    standing.mkdir()
    _mug().export(standing / "mug.obj")  # z-up: the default
    lib, lines = _load(standing, caplog)
    assert lib[0].up == "+z" and lines == []
    ref = procedural_objects(["mug"], seed=0)[0]
    np.testing.assert_allclose(lib[0].mesh.extents, ref.mesh.extents, rtol=1e-5)
    # the same file in a YCB layout stands the same way
    ycb = tmp_path / "ycb" / "025_mug" / "google_16k"
    ycb.mkdir(parents=True)
    _mug().export(ycb / "textured.obj")
    np.testing.assert_allclose(load_objects(tmp_path / "ycb")[0].mesh.extents, ref.mesh.extents, rtol=1e-5)
    # a y-up mug file read z-up lies on its side: one warning naming the axis to pass
    lying = tmp_path / "lying"
    lying.mkdir()
    trimesh.Trimesh(ref.mesh.vertices, ref.mesh.faces).export(lying / "mug.obj")
    lib, lines = _load(lying, caplog)
    (line,) = lines
    assert line.startswith(f"{lying / 'mug.obj'}: this mug looks lying down: it is round about the file's y axis")
    assert "pass --up +y (or -y)" in line
    lib, lines = _load(lying, caplog, up="+y")
    assert lines == [] and lib[0].up == "+y"
    # glTF fixes +y up: a y-up .glb stands without --up
    trimesh.Trimesh(ref.mesh.vertices, ref.mesh.faces).export(lying / "mug.glb")
    (lying / "mug.obj").unlink()
    lib, lines = _load(lying, caplog)
    assert lib[0].up == "+y" and lines == []


# --- URDF and single files ----------------------------------------------------------------------


def _urdf(mesh: str, scale: str = "0.001 0.001 0.001", xyz: str = "0 0 0.5", head: str = "") -> str:
    return (
        f'<?xml version="1.0"?>{head}<robot name="duck"><link name="base">'
        f'<visual><origin xyz="{xyz}" rpy="0 0 0"/><geometry><mesh filename="{mesh}" scale="{scale}"/>'
        "</geometry></visual><collision><geometry><box size='1 1 1'/></geometry></collision></link></robot>"
    )


def test_urdf_visual_mesh_and_scale(tmp_path, caplog):
    folder = tmp_path / "objs"
    (folder / "meshes").mkdir(parents=True)
    box = trimesh.creation.box(extents=[60.0, 40.0, 100.0])  # millimetres, z-up
    box.export(folder / "meshes" / "duck_visual.obj")
    (folder / "duck.urdf").write_text(_urdf("package://duck/meshes/duck_visual.obj"))
    lib, lines = _load(folder, caplog)
    (duck,) = lib  # the mesh it names is not loaded again on its own
    assert duck.id == "duck" and duck.source.endswith("duck.urdf")
    assert duck.unit_scale == 1.0 and duck.scale_from == "auto m" and lines == []  # the URDF scale made metres
    np.testing.assert_allclose(duck.mesh.extents, [0.06, 0.1, 0.04], rtol=1e-5)  # z-up turned to y-up
    assert duck.mesh.bounds.mean(axis=0)[1] == pytest.approx(0.5)  # the visual origin: 0.5 m up
    assert duck.repairs[0] == "URDF: 1 visual mesh, scale 0.001 0.001 0.001"
    # a DOCTYPE (entity expansion) is refused, a missing mesh named: both skipped with one line
    (folder / "duck.urdf").write_text(_urdf("meshes/duck_visual.obj", head='<!DOCTYPE r [<!ENTITY a "b">]>'))
    (folder / "ghost.urdf").write_text(_urdf("meshes/nothing.obj"))
    lib, lines = _load(folder, caplog)
    assert [a.id for a in lib] == ["duck-visual"]  # the URDF failed, so its mesh is an object of its own
    reasons = {s.id: s.reason for s in lib.skipped}
    assert "DTDForbidden" in reasons["duck"]
    assert "the mesh 'meshes/nothing.obj' it names was not found" in reasons["ghost"]


def test_single_file_objects(tmp_path, caplog):
    folder = tmp_path / "lego_brick"
    folder.mkdir()
    trimesh.creation.box(extents=[31.8, 15.8, 11.4]).export(folder / "model.stl")
    _blob(2.5).export(folder / "other.obj")
    lib, _ = _load(folder / "model.stl", caplog)
    (brick,) = lib
    assert brick.id == "lego-brick" and brick.scale_from == "auto mm"
    np.testing.assert_allclose(brick.mesh.extents, [0.0318, 0.0114, 0.0158], rtol=1e-5)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(HoigenError, match="notes.txt: not a mesh file"):
        load_objects(tmp_path / "notes.txt")
    with pytest.raises(HoigenError, match="--objects .*nothing.obj does not exist; pass a folder .* or one such file"):
        load_objects(tmp_path / "nothing.obj")


# --- prompts ------------------------------------------------------------------------------------


def test_name_placeholder_and_object_falls_back_to_the_name():
    from hoigen.diffusion.prompts import fill_prompt, object_words, readable_name
    from hoigen.diffusion.stage import sample_prompt

    assert readable_name("lego-brick") == "lego brick"
    assert readable_name("002-master-chef-can") == "master chef can"
    assert object_words("object", "duck") == {"object": "duck", "name": "duck"}
    assert object_words("mug", "025-mug") == {"object": "mug", "name": "mug"}
    assert fill_prompt("a hand holds the {name} ({object})", object="can", name="master chef can") == (
        "a hand holds the master chef can (can)"
    )
    sample = {"__key__": "lego-brick_0000_007_00", "ann.json": {"object": {"id": "lego-brick", "category": "object"}}}
    prompt = sample_prompt(["a hand picks up a {object}; {name}, {background}"], sample, np.random.default_rng(0))
    assert prompt.startswith("a hand picks up a lego brick; lego brick, ")


def test_inline_comments_and_escaped_hash(tmp_path):
    from hoigen.diffusion.prompts import load_prompts, numbered_prompts

    path = tmp_path / "prompts.txt"
    path.write_text(
        "# header\n"
        "a hand holding a {object}  # close-ups\n"
        "a photo of C# code on a {object}\n"
        "a \\#1 mug in a hand\t# tab comment\n"
        "   # only a comment\n"
    )
    assert load_prompts(path) == ["a hand holding a {object}", "a photo of C# code on a {object}", "a #1 mug in a hand"]
    assert [n for n, _ in numbered_prompts(path)] == [2, 3, 4]


def test_truncation_warns_once_per_distinct_prompt_with_its_line(tmp_path, caplog):
    from hoigen.diffusion.prompts import TruncationWarner, fill_prompt, load_prompts
    from hoigen.diffusion.tiny import build_tiny_tokenizer

    path = tmp_path / "prompts.txt"
    long = "a very detailed photo of a hand holding a {object} " + "with many words " * 6
    path.write_text(f"# prompts\na hand and a {{object}}\n{long}\n")
    templates = load_prompts(path)
    warner = TruncationWarner(build_tiny_tokenizer(), templates, path)
    prompts = [fill_prompt(t, object=o) for o in ("mug", "can") for t in templates]
    with caplog.at_level(logging.WARNING, logger="hoigen.prompts"):
        lines = warner.check(prompts) + warner.check(prompts) + warner.check(prompts[:2])
    assert len(lines) == 2  # two distinct long prompts, each once, however many images use them
    assert all(line.startswith(f"{path}:3: prompt is ") and "the text encoder reads 77" in line for line in lines)
    assert "cut off: '" in lines[0] and [r.getMessage() for r in caplog.records] == lines
    # diffusers' own per-batch message is dropped once the warner is in place
    diffusers_log = logging.getLogger("diffusers.pipelines.controlnet.pipeline_controlnet")
    message = "The following part of your input was truncated because CLIP ..."
    record = diffusers_log.makeRecord(diffusers_log.name, logging.WARNING, "x", 1, message, (), None)
    assert not diffusers_log.filter(record)


# --- reports ------------------------------------------------------------------------------------


def _grasp_folder(folder: Path, stats: dict[str, dict]) -> None:
    """A grasp output folder with objects and per-object candidate counts, as the stage writes them."""
    from hoigen.grasp.report import STATS_DIR

    assets = []
    for object_id, (extent, source) in {"mug": (0.11, "auto mm"), "duck": (2.5, "--units m")}.items():
        box = trimesh.creation.box(extents=[extent, extent / 2, extent / 3])
        from hoigen.objects import ObjectAsset

        assets.append(ObjectAsset.create(object_id, "mug" if object_id == "mug" else "object", box.vertices,
                                         box.faces, f"{object_id}.obj", scale_from=source))  # fmt: skip
    save_objects(assets, folder)
    (folder / STATS_DIR).mkdir(parents=True)
    for object_id, counts in stats.items():
        base = {"object": object_id, "wanted": 2, "rounds": 1, "candidates": 16, "reasons": {"contacts": 3}}
        (folder / STATS_DIR / f"{object_id}.json").write_text(json.dumps({**base, **counts}))


def test_report_lines_tell_the_truth(tmp_path):
    from hoigen.grasp.report import filter_line, filter_stats, print_report, short_line

    _grasp_folder(tmp_path, {
        "mug": {"evaluated": 5, "accepted": 1, "rejected": 4, "written": 1},
        "duck": {"evaluated": 16, "accepted": 0, "rejected": 16, "written": 0},
    })  # fmt: skip
    stats = filter_stats(tmp_path)
    assert stats["objects"] == 2 and stats["objects_with_grasps"] == 1 and stats["grasps_written"] == 1
    line = filter_line(stats)
    assert "1 of 2 objects have grasps" in line and "accepted/measured 1/21 (5%)" in line
    assert "1 of 4 grasps written, 2 objects short (short: duck 0/2, mug 1/2)" in line
    short = {o["object"]: short_line(o) for o in stats["short"]}
    assert short["duck"].startswith("duck: none of 16 measured candidates passed the filters; no grasp written")
    assert "size is the likely cause: 250 cm across is larger than a hand can hold (units: --units m)" in short["duck"]
    assert short["mug"] == (
        "mug: 1 of 2 grasps passed the filters (1 of 5 measured candidates accepted); 1 written; "
        "see run.json grasp_filter"
    )
    assert "written as they are" not in " ".join(short.values())
    result = print_report(tmp_path)  # every object is in the table, the one with no grasp too
    assert result["object"]["duck"]["accepted"] == 0 and result["object"]["duck"]["evaluated"] == 16
    assert result["object"]["mug"]["written"] == 1 and result["category"]["object"]["objects"] == 1


def test_failed_grasp_run_names_size_and_leaves_no_index(tmp_path):
    from hoigen.data.contract import INDEX_FILE
    from hoigen.grasp.stage import record_grasp_filter

    _grasp_folder(tmp_path, {
        "mug": {"evaluated": 5, "accepted": 0, "rejected": 5, "written": 0},
        "duck": {"evaluated": 16, "accepted": 0, "rejected": 16, "written": 0},
    })  # fmt: skip
    (tmp_path / INDEX_FILE).write_bytes(b"half")
    (tmp_path / "run.json").write_text('{"stage": "grasp"}')
    with pytest.raises(HoigenError) as err:
        record_grasp_filter(tmp_path, quiet=True)
    message = str(err.value)
    assert "\n" not in message and "no accepted grasp for any of 2 objects (21 candidates measured)" in message
    assert "size is the likely cause: duck: 250 cm across is larger than a hand can hold" in message
    assert not (tmp_path / INDEX_FILE).exists()
    assert json.loads((tmp_path / "run.json").read_text())["grasp_filter"]["grasps_written"] == 0


def test_contact_sheet_rows_are_grasp_frames(tmp_path):
    from hoigen.data.shards import ShardWriter
    from hoigen.preview import grasp_frame_keys, spread_samples

    keys = [f"{o}_{g:04d}_{f:03d}_{v:02d}" for o in ("mug", "can") for g in range(2) for f in range(8)
            for v in range(2)]  # fmt: skip
    assert grasp_frame_keys(keys) == [f"{o}_{g:04d}_007_{v:02d}" for o in ("mug", "can") for g in range(2)
                                      for v in range(2)]  # fmt: skip
    with ShardWriter(tmp_path / "shard-000000.tar") as writer:
        for key in keys:
            writer.write({"__key__": key, "shade.png": np.zeros((8, 8, 3), np.uint8)})
    picked = [s["__key__"] for s in spread_samples(tmp_path, 4)]
    assert len(picked) == 4 and all(k.split("_")[2] == "007" for k in picked)
    assert {k.split("_")[2] for k in (s["__key__"] for s in spread_samples(tmp_path, 8, frames="all"))} != {"007"}
