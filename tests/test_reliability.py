"""Reliability of the shard layer: folder locks, crash resume of the runner at every hook (one or two
workers), identical bytes across ranks/workers/finish orders, `hoigen merge`, `hoigen validate`
and the fault table rows owned by the data layer (README "Failure behaviour")."""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from clirun import exit_code

from hoigen.data import shards as shards_module
from hoigen.data.contract import RENDER_FIELDS
from hoigen.data.faults import KILL_ENV
from hoigen.data.index import INDEX_FILE, RUN_FILE, run_command
from hoigen.data.lock import FolderLock, fingerprint, lock_name
from hoigen.data.merge import merge
from hoigen.data.runner import StageContext, Task, run_stage
from hoigen.data.schema import sample_key
from hoigen.data.shards import list_shards, read_shard, write_shard
from hoigen.data.validate import validate
from hoigen.errors import HoigenError
from hoigen.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


# --- a toy stage (cheap; shared with the subprocesses) ------------------------------------------

sys.path.insert(0, str(Path(__file__).parent))
from test_reliability_toy import run_toy, toy_tasks  # noqa: E402


def toy_fp(seed: int = 7) -> str:
    return fingerprint("toy", seed, {"n": 5})


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "out"
    run_toy(out)
    return folder_bytes(out)


# --- locks --------------------------------------------------------------------------------------


def test_second_run_refuses_and_names_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = FolderLock(out, 0, 1, toy_fp()).acquire()
    try:
        with pytest.raises(HoigenError) as err:
            run_toy(out)
        text = one_line(err)
        assert f"pid {os.getpid()}" in text and socket.gethostname() in text and "since" in text
        assert list_shards(out) == []
    finally:
        holder.release()
    assert run_toy(out).shards_written == 5  # free again once released
    assert not list(out.glob(".lock*"))


LOCK_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    from hoigen.data.lock import FolderLock
    FolderLock(sys.argv[1], 0, 1, "x").acquire()
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, reference: dict[str, bytes]) -> None:
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-c", LOCK_AND_DIE, str(out)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    stale = out / lock_name(0, 1)
    assert stale.exists() and json.loads(stale.read_text())["pid"] != os.getpid()
    run_toy(out)
    assert folder_bytes(out) == reference  # lock file gone, output as a clean run's


def _take(folder: str, barrier, results) -> None:
    barrier.wait()
    try:
        lock = FolderLock(Path(folder), 0, 1, "x").acquire()
    except HoigenError:
        results.put("refused")
        return
    results.put("won")
    import time

    time.sleep(1.5)
    lock.release()


def test_two_takers_of_a_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / lock_name(0, 1)).write_text(json.dumps({"pid": 999999, "host": socket.gethostname()}))
    mp = multiprocessing.get_context("fork")
    barrier, results = mp.Barrier(4), mp.Queue()
    procs = [mp.Process(target=_take, args=(str(out), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    got = sorted(results.get(timeout=5) for _ in procs)
    assert got == ["refused", "refused", "refused", "won"]


def test_ranks_of_one_run_share_a_folder_other_runs_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rank0 = FolderLock(out, 0, 2, toy_fp()).acquire()
    try:
        assert run_toy(out, shard_index=1, num_shards=2).shards_written == 2  # rank 1 of the same run
        with pytest.raises(HoigenError, match="splits the shards into 2 ranks, this run into 3"):
            run_toy(out, shard_index=1, num_shards=3)
        with pytest.raises(HoigenError, match="another run"):
            run_toy(out, seed=8, shard_index=1, num_shards=2)
        with pytest.raises(HoigenError, match="another run is writing"):
            run_toy(out)  # a single-process run would write rank 0's shards too
    finally:
        rank0.release()


# --- determinism across ranks, workers and finish order; merge --------------------------------


def test_ranks_workers_and_finish_order_give_identical_folders(tmp_path: Path, reference) -> None:
    for name, order in (("fwd", [0, 1, 2]), ("rev", [2, 1, 0])):
        out = tmp_path / name
        summaries = [run_toy(out, shard_index=r, num_shards=3) for r in order]
        assert [s.complete for s in summaries] == [False, False, True]
        assert folder_bytes(out) == reference, name  # index.parquet and run.json too
    run_toy(tmp_path / "w2", workers=2)
    assert folder_bytes(tmp_path / "w2") == reference


def test_environment_ranks_match(tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "torchrun"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for r in (1, 0):
        monkeypatch.setenv("RANK", str(r))
        run_toy(out)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    out2 = tmp_path / "slurm"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    for task in (3, 1, 2):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        run_toy(out2)
    assert folder_bytes(out) == reference and folder_bytes(out2) == reference


def test_run_json_command_leaves_out_split_and_worker_options() -> None:
    argv = ["/x/bin/hoigen", "render", "--in", "g", "--shard-index", "1", "--num-shards=4", "--workers", "2", "-q"]
    assert run_command(argv) == "hoigen render --in g"
    assert run_command(["/x/hoigen/__main__.py", "grasp", "--out", "o"]) == "hoigen grasp --out o"


def test_merge_rank_folders_equals_one_run(tmp_path: Path, reference) -> None:
    ranks = [tmp_path / f"rank{r}" for r in range(3)]
    for r, folder in enumerate(ranks):
        run_toy(folder, shard_index=r, num_shards=3)
        assert not (folder / INDEX_FILE).exists()  # incomplete alone
    with pytest.raises(HoigenError, match="1 of 5 shards missing .shard-000002.tar"):
        merge(tmp_path / "m", ranks[:2])
    summary = merge(tmp_path / "m", ranks)
    assert (summary.shards, summary.samples) == (5, 15)
    got = folder_bytes(tmp_path / "m")
    run = json.loads(got.pop(RUN_FILE))
    assert run["merged_from"] == sorted(str(r) for r in ranks) and run["seed"] == 7
    assert got == {k: v for k, v in reference.items() if k != RUN_FILE}
    assert merge(tmp_path / "m", ranks).copied == 0  # idempotent
    # in place: ranks that shared one folder; the index is rebuilt identically
    (tmp_path / "m" / INDEX_FILE).unlink()
    code = exit_code("merge", tmp_path / "m", "--quiet")
    assert code == 0 and (tmp_path / "m" / INDEX_FILE).read_bytes() == reference[INDEX_FILE]


def test_merge_refuses_other_runs_and_differing_shards(tmp_path: Path) -> None:
    run_toy(tmp_path / "a", shard_index=0, num_shards=2)
    run_toy(tmp_path / "b", seed=9, shard_index=1, num_shards=2)
    with pytest.raises(HoigenError, match="seed differs"):
        merge(tmp_path / "m", [tmp_path / "a", tmp_path / "b"])
    run_toy(tmp_path / "c", shard_index=0, num_shards=2)
    shard = tmp_path / "c" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    with pytest.raises(HoigenError, match="differs from"):
        merge(tmp_path / "m2", [tmp_path / "a", tmp_path / "c"])
    assert merge(tmp_path / "m3", [tmp_path / "a"], partial=True).shards == 3


# --- crash resume of the runner, one and two workers -------------------------------------------

TOY_SCRIPT = textwrap.dedent("""
    import sys
    from test_reliability_toy import run_toy

    if __name__ == "__main__":
        from hoigen.cli import main_guard
        main_guard(lambda: run_toy(sys.argv[1], workers=int(sys.argv[2])))
""")


def run_script(tmp_path: Path, out: Path, workers: int, kill_at: str) -> subprocess.CompletedProcess:
    script = tmp_path / "toy_run.py"
    script.write_text(TOY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{Path(__file__).parent}", KILL_ENV: kill_at}
    args = [sys.executable, str(script), str(out), str(workers)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def test_runner_killed_at_every_hook_resumes_to_identical_bytes(tmp_path: Path, reference) -> None:
    out = tmp_path / "out"
    # each run resumes the last and dies further on: mid-shard 1, a synced unpublished shard 2, an index part
    # without its shard 3, right after publishing shard 3, just before the index, inside the index write
    points = ["shard-sample#5", "shard-closed#2", "shard-part#2", "shard-published#1", "index", "atomic-tmp#1"]
    for point in points:
        proc = run_script(tmp_path, out, 1, point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr)
    assert run_script(tmp_path, out, 1, "").returncode == 0
    assert folder_bytes(out) == reference


def test_two_workers_one_killed_resume_to_identical_bytes(tmp_path: Path, reference) -> None:
    out = tmp_path / "out"
    proc = run_script(tmp_path, out, 2, "shard-sample#2")  # every worker dies in its first shard
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "a worker process died" in lines[0] and "rerun the same command" in lines[0]
    assert run_script(tmp_path, out, 2, "").returncode == 0
    assert folder_bytes(out) == reference


SLOW_SCRIPT = textwrap.dedent("""
    import sys
    from test_reliability_toy import run_slow

    if __name__ == "__main__":
        from hoigen.cli import main_guard
        main_guard(lambda: run_slow(sys.argv[1]))
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_never_outlive_a_killed_or_stopped_run(tmp_path: Path, sig: int) -> None:
    import time

    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{Path(__file__).parent}"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out")], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pid-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("pid-*")]
    assert len(pids) >= 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:  # workers finish the shards in hand, nothing new starts, the run says how to resume
        assert proc.returncode == 130 and b"rerun the same command" in err
        assert 2 <= len(list_shards(tmp_path / "out")) < 6
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "a worker outlived its run"


# --- validate -----------------------------------------------------------------------------------


def render_like(samples, ctx: StageContext):
    """A stand-in render stage whose samples follow the whole contract (cheap)."""
    for s in samples:
        key = s["__key__"]
        rng = ctx.rng(key)
        ann = {
            "key": key,
            "hand": {
                "side": "right",
                "model": "toy",
                "global_orient": [0.0] * 3,
                "hand_pose": [0.0] * 45,
                "betas": [0.0] * 10,
                "transl": [0.0] * 3,
                "joints3d": rng.normal(size=(21, 3)).round(4).tolist(),
                "joints2d": rng.normal(size=(21, 2)).round(4).tolist(),
                "joints_visible": [True] * 21,
            },
            "object": {
                "id": key.split("_")[0],
                "category": "mug",
                "mesh_sha256": "0" * 64,
                "pose": np.eye(4).tolist(),
                "nocs_from_mesh": np.eye(4).tolist(),
            },
            "camera": {"K": np.eye(3).tolist(), "world_to_cam": np.eye(4).tolist(), "width": 12, "height": 10},
            "trajectory": {"frame": 0, "frames": 1},
            "grasp": {"penetration_cm": 0.1},
        }
        out = {"__key__": key, "ann.json": ann}
        for name in RENDER_FIELDS:
            two_d = name in ("seg.png", "amodal.png", "depth.png")
            dtype = np.uint16 if name == "depth.png" else np.uint8
            out[name] = rng.integers(0, 3, (10, 12) if two_d else (10, 12, 3)).astype(dtype)
        yield out


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    out = tmp_path / "render"
    tasks = [Task(i, tuple({"__key__": sample_key(f"mug-{i}", 0, f, 0)} for f in range(2))) for i in range(2)]
    run_stage(render_like, tasks, StageContext("render", 0, {}, out), quiet=True)
    return out


def test_validate_good_folder(good: Path, capsys: pytest.CaptureFixture) -> None:
    report = validate(good)
    assert report.ok and (report.shards, report.samples) == (2, 4)
    assert exit_code("validate", good) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ok:") and "2 shards, 4 samples" in out[0]


def _rewrite(shard: Path, change) -> None:
    samples = [
        {k: v for k, v in s.items() if k != "__shard__"} for s in read_shard(shard, decode=False)
    ]
    change(samples)
    shard.unlink()
    write_shard(shard, samples)


def _drop_betas(samples: list) -> None:
    ann = json.loads(samples[0]["ann.json"])
    del ann["hand"]["betas"]
    samples[0]["ann.json"] = json.dumps(ann).encode()


def _resize_seg(samples: list) -> None:
    from hoigen.data.codec import encode_field

    samples[1]["seg.png"] = encode_field("seg.png", np.zeros((5, 5), np.uint8))


def _rgb_depth(samples: list) -> None:
    from hoigen.data.codec import encode_field

    samples[0]["depth.png"] = encode_field("depth.png", np.zeros((10, 12, 3), np.uint8))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: _truncate(d / "shard-000001.tar"), "truncated or corrupt shard"),
        (lambda d: _rewrite(d / "shard-000000.tar", _json_in_png), "seg.png is not valid .png"),
        (lambda d: _rewrite(d / "shard-000000.tar", _drop_betas), "ann.json has no field hand.betas"),
        (lambda d: _rewrite(d / "shard-000001.tar", _resize_seg), "seg.png is 5x5, camera says 12x10"),
        (lambda d: _rewrite(d / "shard-000000.tar", _rgb_depth), "depth.png is uint8 3, expected uint16 2-D"),
        (lambda d: _rewrite(d / "shard-000000.tar", lambda s: s[0].pop("nocs.png")), "member nocs.png is missing"),
        (lambda d: (d / "shard-000001.tar").unlink(), "1 of 2 shards missing (shard-000001.tar)"),
        (lambda d: (d / "shard-000000.tar.tmp-123").write_bytes(b"x"), "temporary file left"),
        (lambda d: (d / INDEX_FILE).unlink(), "index.parquet: missing"),
        (lambda d: _drop_index_row(d), "no row for mug-1_0000_001_00"),
    ],
    ids=["truncated", "json-in-png", "missing-field", "png-size", "png-mode", "missing-member", "missing-shard",
         "tmp-left", "no-index", "index-row"],
)
def test_validate_reports_damage(good: Path, damage, expected: str) -> None:
    damage(good)
    report = validate(good)
    assert not report.ok and any(expected in p for p in report.problems), report.problems
    assert all("\n" not in p for p in report.problems)
    assert exit_code("validate", good) == 1


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _json_in_png(samples: list) -> None:
    samples[0]["seg.png"] = b'{"not": "a png"}'


def _drop_index_row(folder: Path) -> None:
    table = pq.read_table(folder / INDEX_FILE)
    pq.write_table(table.slice(0, table.num_rows - 1), folder / INDEX_FILE)


# --- the fault table (data-layer rows) ----------------------------------------------------------


def copy_stage(samples, ctx: StageContext):
    for s in samples:
        yield {k: v for k, v in s.items() if k != "__shard__"}


def run_on(folder: Path, out: Path):
    tasks = [Task(i, p) for i, p in enumerate(list_shards(folder))]
    return run_stage(copy_stage, tasks, StageContext("render", 0, {}, out, in_dir=folder), quiet=True)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: _truncate(d / "shard-000001.tar"), "shard-000001.tar: truncated or corrupt shard"),
        (lambda d: _rewrite(d / "shard-000001.tar", _json_in_png), "member seg.png is not valid .png"),
        (lambda d: _rewrite(d / "shard-000001.tar", _drop_betas), "ann.json has no field hand.betas"),
    ],
    ids=["truncated-tar", "member-not-its-extension", "ann-missing-field"],
)
def test_fault_bad_input_shard_is_one_line_and_harms_nothing(good: Path, tmp_path: Path, damage, expected) -> None:
    out = tmp_path / "next"
    damage(good)
    with pytest.raises(HoigenError) as err:
        run_on(good, out)
    text = one_line(err)
    assert expected in text and "rerun the stage that wrote it" in text
    assert [p.name for p in list_shards(out)] == ["shard-000000.tar"]  # shard 0 done, 1 not marked done
    assert len(list(read_shard(out / "shard-000000.tar"))) == 2
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_fault_recipe_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 0\nrender:\n  veiws: 2\n")
    with pytest.raises(HoigenError) as err:
        load_recipe(recipe)
    assert "unknown key 'veiws'" in one_line(err) and "did you mean 'views'?" in str(err.value)


def _shard_mtimes(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in list_shards(out)}


class FullDisk(io.FileIO):
    """A file that fails with ENOSPC once more than ``room`` bytes were written to it."""

    room = 4096

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_fault_disk_full_mid_shard(tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    run_toy(out, tasks=toy_tasks()[:2])  # two shards done before the disk fills
    before = _shard_mtimes(out)
    monkeypatch.setattr(shards_module, "open", lambda p, mode: FullDisk(p, "w"), raising=False)
    with pytest.raises(HoigenError) as err:
        run_toy(out)
    text = one_line(err)
    assert "disk full" in text and str(out / "shard-000002.tar") in text and "not marked done" in text
    assert _shard_mtimes(out) == before  # earlier shards untouched; shard 2 not published
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or p.name.endswith("000002.parquet")]
    monkeypatch.undo()  # space freed: the same command finishes the job
    run_toy(out)
    assert folder_bytes(out) == reference


def test_fault_disk_full_at_sync(tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(HoigenError, match=r"shard-000002.tar: cannot write \(disk full"):
        run_toy(out)
    assert [p.name for p in list_shards(out)] == ["shard-000000.tar", "shard-000001.tar"]
    monkeypatch.undo()
    run_toy(out)
    assert folder_bytes(out) == reference


def test_fault_read_only_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    run_toy(out)
    before = folder_bytes(out)
    mtimes = _shard_mtimes(out)
    (out / "shard-000004.tar").unlink()
    del before["shard-000004.tar"]
    before.pop(INDEX_FILE)
    real_open = os.open

    def read_only(path, flags, *args, **kw):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(HoigenError) as err:
        run_toy(out)
    text = one_line(err)
    assert "read-only file system" in text and str(out) in text
    monkeypatch.undo()
    after = folder_bytes(out)
    after.pop(INDEX_FILE, None)
    assert after == before and {k: v for k, v in _shard_mtimes(out).items()} == {
        k: v for k, v in mtimes.items() if k != "shard-000004.tar"
    }


def test_fault_permission_denied_on_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"

    def denied(path, mode):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(shards_module, "open", denied, raising=False)
    with pytest.raises(HoigenError) as err:
        run_toy(out)
    assert "permission denied" in one_line(err) and "shard-000000.tar" in str(err.value)
    assert list_shards(out) == []


def test_fault_export_of_an_unfinished_stage_is_refused(good: Path, tmp_path: Path) -> None:
    (good / "shard-000001.tar").unlink()
    assert exit_code("export", "--in", good, "--out", tmp_path / "nocs", "--quiet") == 1
    with pytest.raises(HoigenError, match="1 of 2 shards are missing; finish that stage first"):
        from hoigen import api
        from hoigen.export.options import ExportOptions

        api.export(good, tmp_path / "nocs", ExportOptions(), quiet=True)
    assert not (tmp_path / "nocs").exists()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert exit_code("validate", tmp_path / "nope") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]


def test_stale_index_and_tmp_files_are_cleaned_on_resume(tmp_path: Path, reference) -> None:
    out = tmp_path / "out"
    run_toy(out)
    (out / "shard-000003.tar").unlink()
    for junk in ("shard-000003.tar.tmp-4242", ".index.parquet.tmp-4242", "_index/.shard-000003.parquet.tmp-1"):
        (out / junk).write_bytes(b"partial")
    run_toy(out)
    assert folder_bytes(out) == reference

