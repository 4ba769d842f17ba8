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


def test_corrupt_input_index_is_one_line(made) -> None:
    src, _ = made
    cut(src / INDEX_FILE)
    with pytest.raises(HoigenError) as err:
        read_index(src)
    assert "index.parquet: unreadable" in one_line(err) and "hoigen merge" in one_line(err)


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
