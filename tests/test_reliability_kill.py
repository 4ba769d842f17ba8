"""Kill-and-resume for every stage: SIGKILL at several points (mid-shard-write included), rerun the
same command, and the folder equals an uninterrupted run's byte for byte. Also SIGTERM (exit 130,
says how to resume) and `hoigen validate` on the real stages' output.

Killed runs are CLI processes forked from a forkserver that imported the stages once (so a kill
costs no imports); the points are the deterministic hooks of HOIGEN_TEST_KILL_AT
(hoigen/data/faults.py).
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import sys
from pathlib import Path

import pytest
from clirun import cli_child

from hoigen.cli import main
from hoigen.data.faults import KILL_ENV
from hoigen.data.validate import validate

PRELOAD = ["hoigen.cli", "hoigen.api", "hoigen.grasp.stage", "hoigen.render.stage", "hoigen.diffusion.stage"]
STAGES = {
    "grasp": ["grasp", "--categories", "mug", "--grasps", "1", "--frames", "2", "--out", "grasp"],
    "render": ["render", "--in", "grasp", "--views", "2", "--size", "32", "--out", "render"],
    "synth": ["synthesize", "--in", "render", "--steps", "1", "--size", "32", "--out", "synth"],
    "nocs": ["export", "--in", "synth", "--out", "nocs"],
}


def run_inprocess(root: Path, argv: list[str]) -> int:
    """The real console entry point in this process, from ``root`` (relative paths)."""
    import os

    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["hoigen", *argv, "--quiet"]
    os.chdir(root)
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return 0


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.BaseContext:
    import multiprocessing.forkserver

    multiprocessing.forkserver._forkserver._stop()  # a server started by earlier tests lacks the preload
    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload(PRELOAD)
    return mp


def run_child(mp, root: Path, argv: list[str], kill_at: str, stderr: Path | None = None) -> int:
    env = {KILL_ENV: kill_at, "PYOPENGL_PLATFORM": "egl"}
    proc = mp.Process(target=cli_child, args=([*argv, "--quiet"], env, str(root), str(stderr) if stderr else None))
    proc.start()
    proc.join(120)
    assert proc.exitcode is not None, "child did not finish"
    return proc.exitcode


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """An uninterrupted grasp -> render -> synthesize -> export chain and the bytes of every folder."""
    root = tmp_path_factory.mktemp("chain")
    for argv in STAGES.values():
        assert run_inprocess(root, argv) == 0, argv
    return root, {name: snapshot(root / name) for name in STAGES}


def kill_and_resume(mp, root: Path, stage: str, points: list[str]) -> dict[str, bytes]:
    shutil.rmtree(root / stage)
    for point in points:
        assert run_child(mp, root, STAGES[stage], point) == -signal.SIGKILL, f"{stage}: {point} was never reached"
    assert run_inprocess(root, STAGES[stage]) == 0
    return snapshot(root / stage)


@pytest.mark.parametrize(
    ("stage", "points"),
    [
        # objects/<id>.ply half written (before the lock's first shard); one sample in the temporary shard
        ("grasp", ["atomic-tmp#1", "shard-sample#1"]),
        # mid-shard (2nd sample); index part written, shard not renamed; shard renamed, index not joined;
        # index.parquet's temporary copy written, not renamed
        ("render", ["shard-sample#2", "shard-part", "shard-published", "atomic-tmp#1"]),
        # mid-shard (each synthesize run builds the diffusion pipeline: the slowest stage to restart)
        ("synth", ["shard-sample#3"]),
        # some dataset files written; every file written but run.json (the completion mark) not yet
        ("nocs", ["atomic-tmp#3", "export-done"]),
    ],
)
def test_killed_stage_resumes_to_identical_bytes(forkserver, clean, stage: str, points: list[str]) -> None:
    root, reference = clean
    got = kill_and_resume(forkserver, root, stage, points)
    assert sorted(got) == sorted(reference[stage])  # nothing lost, nothing extra (no tmp, no lock files)
    for name, data in reference[stage].items():
        assert got[name] == data, f"{stage}/{name} differs after kill and resume"


def test_sigterm_stops_cleanly_and_says_how_to_resume(forkserver, clean, tmp_path: Path) -> None:
    root, reference = clean
    shutil.rmtree(root / "render")
    err = tmp_path / "stderr.txt"
    assert run_child(forkserver, root, STAGES["render"], "shard-sample#1@TERM", err) == 130
    text = err.read_text()
    assert "interrupted" in text and "rerun the same command: hoigen render --in grasp" in text
    left = sorted(p.name for p in (root / "render").iterdir())
    assert not any("tmp" in n or n.startswith("shard-") or n.startswith(".lock") for n in left), left
    assert run_inprocess(root, STAGES["render"]) == 0
    assert snapshot(root / "render") == reference["render"]


@pytest.mark.parametrize("stage", ["grasp", "render", "synth"])
def test_validate_accepts_every_stage_output(clean, stage: str) -> None:
    root, _ = clean
    report = validate(root / stage)
    assert report.ok, report.problems
    assert report.samples == {"grasp": 2, "render": 4, "synth": 4}[stage]
