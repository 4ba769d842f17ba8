"""Integrity (issue 18): a folder never mixes two runs, a damaged shard is never trusted, a missing input
is never skipped, and no input ends in a traceback. A cheap stand-in stage drives the real runner
(:func:`hoigen.data.runner.run`), the real CLI is used where the CLI itself is the point."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clirun import run_hoigen

from hoigen.data.contract import INDEX_FILE, RUN_FILE
from hoigen.data.index import part_checksum, part_path, read_index
from hoigen.data.runner import Plan, Stage, StageContext, Task, input_tasks, run, run_stage
from hoigen.data.schema import sample_key
from hoigen.data.shards import list_shards
from hoigen.errors import HoigenError
from hoigen.options import Common, UsageError

sys.path.insert(0, str(Path(__file__).parent))
from test_reliability import render_like  # noqa: E402


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def tagged(samples, ctx: StageContext):
    """A cheap render-like transform whose output depends on its ``size`` option."""
    for sample in render_like(samples, ctx):
        sample["ann.json"]["grasp"]["size"] = ctx.options.size
        yield sample


@dataclass(frozen=True)
class ToyOptions:
    size: int = 64


class ToyStage(Stage):
    """Render-like shards: from ``in_dir``'s shards when given, else two generated input units."""

    name = "render"

    def __init__(self, in_dir: Path | None = None, size: int = 64) -> None:
        self.in_dir, self.options = in_dir, ToyOptions(size)

    @property
    def transform(self) -> Any:
        return tagged

    def plan(self, out_dir: Path, common: Common) -> Plan:
        if self.in_dir is not None:
            tasks = input_tasks(self.in_dir, ("render",))
        else:
            tasks = [Task(i, tuple({"__key__": sample_key(f"mug-{i}", 0, f, 0)} for f in range(2))) for i in range(3)]
        return Plan(tasks, self.options, {"size": self.options.size}, in_dir=self.in_dir)


def toy(out: Path, in_dir: Path | None = None, size: int = 64, **common: Any):
    return run(ToyStage(in_dir, size), out, Common(quiet=True, **common))


@pytest.fixture()
def made(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "a"
    toy(out)
    return out, folder_bytes(out)


# --- 1. the run fingerprint ---------------------------------------------------------------------


def test_rerun_with_other_options_is_refused_naming_the_option(made) -> None:
    out, before = made
    with pytest.raises(HoigenError) as err:
        toy(out, size=96)
    text = one_line(err)
    assert "--size differs (the folder has 64, this run 96)" in text and "--overwrite" in text and "--out" in text
    assert err.value.exit_code == 1
    assert folder_bytes(out) == before
    with pytest.raises(HoigenError, match="--seed differs"):
        toy(out, seed=3)
    assert folder_bytes(out) == before
    toy(out)  # the same run resumes
    assert folder_bytes(out) == before


def test_overwrite_removes_only_the_stage_files(made, tmp_path: Path) -> None:
    out, _ = made
    (out / "notes.txt").write_text("mine")
    summary = toy(out, size=96, overwrite=True)
    assert summary.shards_written == 3
    fresh = tmp_path / "fresh"
    toy(fresh, size=96)
    got = folder_bytes(out)
    assert got.pop("notes.txt") == b"mine"
    assert got == folder_bytes(fresh)
    assert toy(out, size=96, overwrite=True).shards_written == 0  # same run: --overwrite resumes, removes nothing


def test_rerun_with_another_input_is_refused(made, tmp_path: Path) -> None:
    first, _ = made
    other = tmp_path / "other"
    toy(other, seed=5)
    toy(tmp_path / "b", in_dir=first)
    with pytest.raises(HoigenError, match=r"its input \(--in\) differs"):
        toy(tmp_path / "b", in_dir=other)


def test_out_equal_to_in_or_another_stage_folder_is_refused(made, tmp_path: Path, capsys) -> None:
    out, before = made
    with pytest.raises(UsageError, match="--out is the input folder"):
        toy(out, in_dir=out)
    assert folder_bytes(out) == before
    run_json = json.loads((out / RUN_FILE).read_text())
    (out / RUN_FILE).write_text(json.dumps({**run_json, "stage": "grasp"}))
    grasp_bytes = folder_bytes(out)
    with pytest.raises(UsageError, match="holds 'grasp' output, not 'render'"):
        toy(out, overwrite=True)
    assert folder_bytes(out) == grasp_bytes
    # the real CLI: render --in X --out X is a usage error (exit 2) and writes nothing
    code, err = run_hoigen("render", "--in", out, "--out", out, "--size", 32, "--quiet", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "--out is the input folder" in err
    assert folder_bytes(out) == grasp_bytes


def test_shards_without_run_json_are_not_resumed(made) -> None:
    out, _ = made
    (out / RUN_FILE).unlink()
    with pytest.raises(HoigenError, match="holds shards but no run.json"):
        toy(out)
    assert toy(out, overwrite=True).shards_written == 3


# --- 2. checksums -------------------------------------------------------------------------------


def flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_every_part_records_its_shard_checksum(made) -> None:
    import hashlib

    out, _ = made
    for shard in list_shards(out):
        size, sha = part_checksum(part_path(out, shard.name))
        assert size == shard.stat().st_size and sha == hashlib.sha256(shard.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", [flip, cut], ids=["flipped", "cut"])
def test_damaged_finished_shard_is_redone_on_resume(made, damage, capfd) -> None:
    out, before = made
    damage(out / "shard-000001.tar")
    summary = toy(out)
    assert (summary.shards_written, summary.shards_skipped) == (1, 2)
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "shard-000001.tar: damaged since it was written" in warnings[0]
    assert folder_bytes(out) == before


@pytest.mark.parametrize("damage", [flip, cut], ids=["flipped", "cut"])
def test_damaged_input_shard_is_one_line(made, damage, tmp_path: Path) -> None:
    src, _ = made
    damage(src / "shard-000002.tar")
    out = tmp_path / "next"
    with pytest.raises(HoigenError) as err:
        toy(out, in_dir=src)
    text = one_line(err)
    assert "shard-000002.tar: truncated or corrupt shard" in text and "rerun the stage that wrote it" in text
    assert [p.name for p in list_shards(out)] == ["shard-000000.tar", "shard-000001.tar"]


def test_missing_or_extra_input_shard_is_one_line(made, tmp_path: Path) -> None:
    src, _ = made
    (src / "shard-000001.tar").rename(tmp_path / "kept.tar")
    with pytest.raises(HoigenError, match=r"1 of 3 shards are missing; finish that stage first .*shard-000001.tar"):
        toy(tmp_path / "next", in_dir=src)
    assert not (tmp_path / "next").exists()
    (tmp_path / "kept.tar").rename(src / "shard-000001.tar")
    (src / "shard-000007.tar").write_bytes((src / "shard-000000.tar").read_bytes())
    with pytest.raises(HoigenError, match=r"1 shards beyond the 3 its run.json records \(shard-000007.tar\)"):
        toy(tmp_path / "next", in_dir=src)


def test_reading_an_index_never_writes_the_input(made) -> None:
    src, _ = made
    table = read_index(src)
    (src / INDEX_FILE).unlink()
    assert read_index(src).equals(table)
    assert not (src / INDEX_FILE).exists()


def test_damaged_input_index_is_never_trusted(made) -> None:
    src, _ = made
    table = read_index(src)
    cut(src / INDEX_FILE)
    assert read_index(src).equals(table)  # joined from the verified parts
    flip(part_path(src, "shard-000001.tar"), 0.3)
    with pytest.raises(HoigenError) as err:
        read_index(src)
    assert "shard-000001.parquet: damaged index part" in one_line(err)
    with pytest.raises(HoigenError, match="missing or damaged index part, so shard-000001.tar cannot be verified"):
        toy(src.parent / "next", in_dir=src)


def test_run_stage_parts_match_a_rebuilt_part(tmp_path: Path) -> None:
    """A part rebuilt from its shard (hoigen merge of an older folder) has the same bytes as a written one."""
    from hoigen.data.index import build_index

    out = tmp_path / "r"
    tasks = [Task(0, tuple({"__key__": sample_key("mug", 0, f, 0)} for f in range(2)))]
    run_stage(render_like, tasks, StageContext("render", 0, {}, out), quiet=True)
    part = part_path(out, "shard-000000.tar")
    written = part.read_bytes()
    part.unlink()
    build_index(out)
    assert part.read_bytes() == written
    assert np.isfinite(part_checksum(part)[0])


# --- 3-6. a real chain: decoding, the ann.json schema, validate of every folder, no tracebacks ---------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """grasp -> render -> synthesize -> export (nocs, bop, coco) at tiny sizes."""
    import os

    from hoigen import api

    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    root = tmp_path_factory.mktemp("chain")
    api.grasp(None, root / "grasp", categories=["mug"], grasps=1, frames=2, quiet=True)
    api.render(root / "grasp", root / "render", views=2, size=32, quiet=True)
    api.synthesize(root / "render", root / "synth", steps=1, size=32, quiet=True)
    for fmt in ("nocs", "bop", "coco"):
        api.export(root / "synth", root / fmt, format=fmt, quiet=True)
    return root


def copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_validate_understands_every_folder(chain: Path, capsys) -> None:
    from hoigen.data.validate import validate

    for name in ("grasp", "render", "synth", "nocs", "bop", "coco"):
        report = validate(chain / name)
        assert report.ok, (name, report.problems)
    assert validate(chain / "bop").summary().startswith(f"ok: {chain / 'bop'}: export folder (bop)")
    assert validate(chain / "nocs").samples >= 4 * 4  # color, coord, depth, mask per image, all decoded


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: next((d / "objects").glob("*.ply")).unlink(), ".ply: missing (listed in"),
        (lambda d: (d / "objects.parquet").unlink(), "objects.parquet: missing; rerun the hoigen grasp command"),
        (lambda d: cut(next((d / "objects").glob("*.ply"))), ".ply: sha256 differs"),
    ],
    ids=["ply-missing", "parquet-missing", "ply-truncated"],
)
def test_validate_checks_the_objects(chain: Path, tmp_path: Path, damage, expected: str) -> None:
    from hoigen.data.validate import validate

    grasp = copy_of(chain / "grasp", tmp_path)
    damage(grasp)
    report = validate(grasp)
    assert any(expected in p for p in report.problems), report.problems


def test_validate_export_advice_fits_an_export(chain: Path, tmp_path: Path) -> None:
    from hoigen.data.validate import validate

    nocs = copy_of(chain / "nocs", tmp_path)
    color = sorted(nocs.rglob("*_color.png"))[0]
    color.unlink()
    report = validate(nocs)
    assert any(f"{color}: missing" in p for p in report.problems), report.problems
    (nocs / RUN_FILE).unlink()
    report = validate(nocs)
    assert any("the export was interrupted; rerun the export command" in p for p in report.problems)
    assert not any("merge" in p for p in report.problems)


def corrupt_jpeg(data: bytes) -> bytes:
    """The JPEG with one bit flipped where libjpeg notices (searched from the middle, deterministic)."""
    from hoigen.data.codec import decode_field

    for pos in range(len(data) // 2, len(data) - 2):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        try:
            decode_field("image.jpg", bytes(bad))
        except HoigenError:
            return bytes(bad)
    raise AssertionError("no flip was noticed")


def rewrite(shard: Path, change) -> None:
    """Change a shard's samples and record its new checksum, as if its stage had written it so."""
    from hoigen.data.index import file_checksum, rows_from_shard, write_part
    from hoigen.data.shards import read_shard, write_shard

    samples = [{k: v for k, v in s.items() if k != "__shard__"} for s in read_shard(shard, decode=False)]
    change(samples)
    shard.unlink()
    write_shard(shard, samples)
    write_part(shard.parent, shard.name, rows_from_shard(shard), file_checksum(shard))


def test_corrupt_image_member_is_an_error(chain: Path, tmp_path: Path) -> None:
    from hoigen.data.codec import decode_field, encode_field
    from hoigen.data.validate import validate

    png = bytearray(encode_field("seg.png", np.arange(64, dtype=np.uint8).reshape(8, 8)))
    png[-20] ^= 0x01  # inside the IDAT data (IEND and the IDAT CRC are the last 16 bytes)
    with pytest.raises(HoigenError, match=r"s1: member seg.png is not valid .png \(CRC error in chunk 'IDAT'"):
        decode_field("seg.png", bytes(png), "s1")
    synth = copy_of(chain / "synth", tmp_path)
    shard = synth / "shard-000000.tar"

    def damage(samples: list) -> None:
        samples[0]["image.jpg"] = corrupt_jpeg(samples[0]["image.jpg"])

    rewrite(shard, damage)
    report = validate(synth)
    assert any("member image.jpg is not valid .jpg (Corrupt JPEG data" in p for p in report.problems), report.problems
    with pytest.raises(HoigenError) as err:
        [s["image.jpg"] for s in Task(0, shard).samples()]  # a member decodes (strictly) when a stage reads it
    assert f"{shard}: member image.jpg is not valid .jpg" in one_line(err)


def set_field(dotted: str, value: Any):
    def change(samples: list) -> None:
        ann = json.loads(samples[0]["ann.json"])
        node = ann
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value(node[last]) if callable(value) else value
        samples[0]["ann.json"] = json.dumps(ann).encode()

    return change


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("hand.betas", lambda v: [1e308, *v[1:]], "hand.betas holds 1e+308, outside -5..5"),
        ("hand.hand_pose", lambda v: [-1e300, *v[1:]], "hand.hand_pose holds -1e+300, outside"),
        ("trajectory.frame", -7, "trajectory.frame -7 is outside 0..1"),
        ("camera.width", 0, "camera.width holds 0, outside 1..16384"),
        ("object.pose", lambda v: (2 * np.asarray(v)).tolist(), "object.pose last row is not 0 0 0 1"),
        ("camera.world_to_cam", lambda v: np.diag([1, 1, -1, 1.0]).tolist(), "world_to_cam is a reflection"),
        ("camera.K", lambda v: np.zeros((3, 3)).tolist(), "camera.K is not a camera matrix"),
    ],
    ids=["betas", "hand-pose", "frame", "camera-size", "pose-scaled", "pose-reflection", "camera-K"],
)
def test_ann_values_out_of_range_are_refused(chain: Path, tmp_path: Path, field: str, value, expected: str) -> None:
    from hoigen.data.validate import validate

    render = copy_of(chain / "render", tmp_path)
    rewrite(render / "shard-000000.tar", set_field(field, value))
    report = validate(render)
    assert any(expected in p for p in report.problems), report.problems
    with pytest.raises(HoigenError) as err:  # a stage reading it refuses it too (checksums match: the values lie)
        toy(tmp_path / "next", in_dir=render)
    assert expected in one_line(err) and "the input shard is damaged" in one_line(err)


def test_export_with_deleted_input_index_leaves_the_input_alone(chain: Path, tmp_path: Path) -> None:
    from hoigen import api

    synth = copy_of(chain / "synth", tmp_path)
    (synth / INDEX_FILE).unlink()
    before = folder_bytes(synth)
    api.export(synth, tmp_path / "nocs", format="nocs", quiet=True)
    assert folder_bytes(synth) == before
    own = {"run.json", "README.md", ".run-start.json"}
    got = {k: v for k, v in folder_bytes(tmp_path / "nocs").items() if k not in own}
    assert got == {k: v for k, v in folder_bytes(chain / "nocs").items() if k not in own}


def test_bad_inputs_are_one_line_not_a_traceback(chain: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    synth = copy_of(chain / "synth", tmp_path)
    cut(synth / INDEX_FILE)
    cases: list[tuple[tuple, int, str]] = [
        (("export", "--in", synth, "--out", tmp_path / "x", "--format", "yolo"), 2, "--format must be one of"),
        (("grasp", "--seed", "-1", "--out", tmp_path / "g"), 2, "--seed must be in 0.."),
        (
            ("render", "--in", chain / "grasp", "--out", tmp_path / "r", "--size", "100000"),
            2,
            "--size must be in 1..8192",
        ),
        (("render", "--in", chain / "grasp", "--out", tmp_path / "r", "--size", "0"), 2, "--size must be in 1..8192"),
        (("synthesize", "--in", chain / "render", "--out", tmp_path / "s", "--size", "100000"), 2, "1..2048"),
    ]
    for recipe, text, want in [
        ("grasp:\n  grasps: two\n", "grasps must be an integer", 2),
        ("render: [1, 2]\n", "a section must be a mapping", 2),
        ("grasp:\n  grasps: 1.7\n", "grasps must be an integer, got 1.7", 2),
        ("seed: -1\n", "seed must be in 0..", 2),
    ]:
        path = tmp_path / f"r{len(cases)}.yaml"
        path.write_text(recipe)
        cases.append((("run", path, "--out", tmp_path / "rr"), want, text))
    for args, code, text in cases:
        got, err = run_hoigen(*args, "--quiet", capsys=capsys) if args[0] != "run" else run_hoigen(*args, capsys=capsys)
        assert (got, err.count("\n")) == (code, 1) and err.startswith("error: ") and text in err, (args, got, err)
    damaged_index = (synth / INDEX_FILE).read_bytes()  # cut above: exporting never trusts (nor rewrites) it
    assert run_hoigen("export", "--in", synth, "--out", tmp_path / "x", "--quiet", capsys=capsys)[0] == 0
    assert (synth / INDEX_FILE).read_bytes() == damaged_index
    monkeypatch.setenv("WORLD_SIZE", "abc")
    got, err = run_hoigen("render", "--in", chain / "grasp", "--out", tmp_path / "w", "--quiet", capsys=capsys)
    assert got == 2 and err.count("\n") == 1 and "WORLD_SIZE='abc' is not an integer" in err


def test_gl_and_memory_failures_are_one_line_naming_the_size(tmp_path: Path) -> None:
    from hoigen.data.runner import resource_error

    gl_error = type("GLError", (Exception,), {"__module__": "OpenGL.error"})
    ctx = StageContext("render", 0, type("O", (), {"size": 8192, "supersample": 4})(), tmp_path, shard=3)
    err = resource_error(gl_error("GL_OUT_OF_MEMORY"), ctx)
    assert err is not None and "\n" not in str(err)
    assert "shard-000003.tar: the GL renderer failed at --size 8192 x --supersample 4" in str(err)
    err = resource_error(MemoryError(), replace_options(ctx, 2048))
    assert "out of memory at --size 2048 (MemoryError)" in str(err)
    assert resource_error(ValueError("x"), ctx) is None


def replace_options(ctx: StageContext, size: int) -> StageContext:
    from dataclasses import replace

    return replace(ctx, options=type("O", (), {"size": size})())


def test_validate_understands_an_ingest_folder(tmp_path: Path) -> None:
    from test_ingest import make_fake_dexycb

    from hoigen import api
    from hoigen.data.validate import validate

    out = tmp_path / "dexycb"
    api.ingest_dexycb(make_fake_dexycb(tmp_path / "root"), out, quiet=True)
    report = validate(out)
    assert report.ok and report.stage == "ingest" and report.samples == 2, report.problems
    rewrite(out / "shard-000000.tar", set_field("hand.betas", lambda v: [9.0, *v[1:]]))
    assert any("hand.betas holds 9, outside -5..5" in p for p in validate(out).problems)
