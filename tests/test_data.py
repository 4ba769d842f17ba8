"""The shard layer: round trips, determinism, atomic publication, resume and rank splits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from hoigen.data.contract import INDEX_FILE, RUN_FILE, read_run_json
from hoigen.data.runner import StageContext, Task, resolve_split, run_stage
from hoigen.data.schema import derive_seed, parse_key, sample_key
from hoigen.data.shards import ShardWriter, list_shards, read_shard, write_shard
from hoigen.errors import HoigenError


def make_sample(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "__key__": sample_key("mug-000", i, 3, 1),
        "ann.json": {
            "key": "x",
            "hand": {"side": "right", "joints3d": rng.normal(size=(21, 3)).round(6).tolist()},
            "object": {"id": "mug-000", "category": "mug"},
            "grasp": {"penetration_cm": 0.25},
        },
        "normal.png": rng.integers(0, 256, (16, 24, 3), dtype=np.uint8),
        "seg.png": rng.integers(0, 3, (16, 24), dtype=np.uint8),
        "depth.png": rng.integers(0, 65535, (16, 24), dtype=np.uint16),
        "image.jpg": np.full((16, 24, 3), 120, np.uint8),
        "prompt.txt": "a hand grasping a mug — über",
        "joints.npy": rng.normal(size=(21, 3)).astype(np.float32),
    }


def test_key_format_and_seed() -> None:
    assert sample_key("mug-000", 3, 7, 1) == "mug-000_0003_007_01"
    assert parse_key("mug-000_0003_007_01") == {"object": "mug-000", "grasp": 3, "frame": 7, "view": 1}
    assert parse_key("mug-000_0003_007") == {"object": "mug-000", "grasp": 3, "frame": 7}
    with pytest.raises(ValueError):
        sample_key("Mug.obj", 0, 0)
    assert derive_seed(0, "a") == derive_seed(0, "a") != derive_seed(1, "a")


def test_round_trip_every_field(tmp_path: Path) -> None:
    samples = [make_sample(i) for i in range(3)]
    path = tmp_path / "shard-000000.tar"
    assert write_shard(path, samples) == 3
    back = list(read_shard(path))
    assert [s["__key__"] for s in back] == [s["__key__"] for s in samples]
    for a, b in zip(samples, back, strict=True):
        assert b["ann.json"] == a["ann.json"]
        for name in ("normal.png", "seg.png", "depth.png"):
            assert b[name].dtype == a[name].dtype and np.array_equal(b[name], a[name]), name
        assert np.abs(b["image.jpg"].astype(int) - 120).max() <= 2  # lossy but close
        assert b["prompt.txt"] == a["prompt.txt"]
        assert np.array_equal(b["joints.npy"], a["joints.npy"])
    # the same shard read by webdataset itself: same keys, same members
    ds = wds.WebDataset(str(path), shardshuffle=False)
    got = list(ds)
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    assert set(got[0]) >= {"ann.json", "normal.png", "seg.png", "depth.png", "image.jpg", "prompt.txt"}


def test_same_samples_give_identical_bytes(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.tar", [make_sample(i) for i in range(2)])
    time.sleep(1.1)
    write_shard(tmp_path / "b.tar", [make_sample(i) for i in range(2)])
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shard-000000.tar"
    with pytest.raises(RuntimeError), ShardWriter(path) as writer:
        writer.write(make_sample(0))
        raise RuntimeError("boom")
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_shard_is_a_one_line_error(tmp_path: Path, cut: float) -> None:
    path = tmp_path / "shard-000000.tar"
    write_shard(path, [make_sample(i) for i in range(3)])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(HoigenError) as err:
        list(read_shard(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_member_that_is_not_its_extension(tmp_path: Path) -> None:
    path = tmp_path / "shard-000000.tar"
    write_shard(path, [{"__key__": "mug-000_0000_000", "seg.png": b"not a png"}])
    with pytest.raises(HoigenError, match="seg.png is not valid"):
        [s["seg.png"] for s in read_shard(path)]  # members decode on first access
    with pytest.raises(HoigenError, match="seg.png is not valid"):  # and are checked before being copied
        write_shard(tmp_path / "shard-000001.tar", read_shard(path))


# --- the runner -------------------------------------------------------------------------------


def toy_stage(samples, ctx: StageContext):
    """Adds a seeded random value to each input sample (a stand-in stage for runner tests)."""
    for sample in samples:
        rng = ctx.rng(sample["__key__"])
        yield {
            "__key__": sample["__key__"],
            "ann.json": {
                "object": {"id": sample["__key__"].split("_")[0], "category": "toy"},
                "value": float(rng.random()),
                "shard": ctx.shard,
            },
        }


def toy_tasks(n_shards: int = 5, per: int = 3) -> list[Task]:
    return [Task(i, tuple({"__key__": sample_key(f"obj-{i}", g, 0)} for g in range(per))) for i in range(n_shards)]


def run_toy(out: Path, **kw) -> object:
    ctx = StageContext(stage="toy", seed=7, options={"n": 5}, out_dir=out)
    return run_stage(toy_stage, toy_tasks(), ctx, quiet=True, **kw)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_shards(folder)}


def test_runner_writes_index_run_json_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_toy(out)
    assert summary.shards_written == 5 and summary.samples_written == 15
    table = pq.read_table(out / INDEX_FILE)
    assert table.num_rows == 15 and set(table.column("shard").to_pylist()) == {f"shard-{i:06d}.tar" for i in range(5)}
    assert read_run_json(out)["seed"] == 7 and (out / RUN_FILE).exists()
    first = shard_bytes(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in list_shards(out)}
    again = run_toy(out)
    assert again.shards_written == 0 and again.shards_skipped == 5
    assert {p.name: p.stat().st_mtime_ns for p in list_shards(out)} == mtimes
    (out / "shard-000002.tar").unlink()
    third = run_toy(out)
    assert third.shards_written == 1
    assert {p.name: p.stat().st_mtime_ns for p in list_shards(out) if p.name != "shard-000002.tar"} == {
        k: v for k, v in mtimes.items() if k != "shard-000002.tar"
    }
    assert shard_bytes(out) == first


def test_rank_split_covers_every_shard_once_and_matches_workers(tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    run_toy(reference)
    split = tmp_path / "split"
    covered: list[int] = []
    for rank in range(3):
        s = run_toy(split, shard_index=rank, num_shards=3)
        covered += [i for i in range(5) if i % 3 == rank]
        assert s.shards_written == len([i for i in range(5) if i % 3 == rank])
    assert sorted(covered) == list(range(5))
    assert shard_bytes(split) == shard_bytes(reference)
    assert pq.read_table(split / INDEX_FILE).equals(pq.read_table(reference / INDEX_FILE))
    workers = tmp_path / "workers"
    run_toy(workers, workers=2)
    assert shard_bytes(workers) == shard_bytes(reference)


def test_resolve_split_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_split() == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert resolve_split() == (2, 4)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    assert resolve_split() == (5, 8)
    assert resolve_split(1, 2) == (1, 2)
    with pytest.raises(HoigenError):
        resolve_split(2, 2)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from hoigen.data.runner import StageContext, Task, run_stage

    def slow(samples, ctx):
        for s in samples:
            yield {"__key__": s["__key__"], "ann.json": {"shard": ctx.shard}}
            if ctx.shard == 1:
                print("writing", flush=True)
                time.sleep(60)

    tasks = [Task(i, tuple({"__key__": f"obj-{i}_000{g}_000"} for g in range(2))) for i in range(3)]
    run_stage(slow, tasks, StageContext("slow", 0, {}, Path(sys.argv[1])), quiet=True)
""")


def test_killed_run_leaves_no_complete_looking_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in out.iterdir())
    assert "shard-000000.tar" in names and "shard-000001.tar" not in names
    assert any(n.startswith("shard-000001.tar.tmp-") for n in names)
    assert [p.name for p in list_shards(out)] == ["shard-000000.tar"]
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 2


# ---------------------------------------------------------------------------- the contract module
def test_contract_encodings_round_trip() -> None:
    from hoigen.data import contract

    depth_m = np.array([[0.0, 0.4567, 1.0], [65.6, -0.1, 0.0004]])
    depth = contract.encode_depth(depth_m)
    assert depth.dtype == np.uint16 and depth.tolist() == [[0, 457, 1000], [65535, 0, 0]]
    assert np.allclose(contract.decode_depth(depth[0]), [0.0, 0.457, 1.0])
    xyz = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 3))
    nocs = contract.encode_nocs(xyz)
    assert nocs.dtype == np.uint8 and np.abs(contract.decode_nocs(nocs) - xyz).max() <= 0.5 / 255 + 1e-12
    facing = contract.normal_colour(np.array([0.0, 0.0, -1.0]))  # toward the camera
    assert np.round(facing).tolist() == [128, 128, 255]
    hand, obj = np.array([True, True, False, False]), np.array([True, False, True, False])
    assert contract.amodal_bits(hand, obj).tolist() == [3, 1, 2, 0]

    assert set(contract.STAGE_FIELDS["synthesize"]) == set(contract.PNG_MODES) | {"ann.json", "image.jpg",
                                                                                   "prompt.txt", "gen.json"}


def test_objects_pointer_is_followed_through_run_json(tmp_path) -> None:
    from hoigen.data.contract import OBJECTS_FILE, OBJECTS_KEY, RUN_FILE, objects_dir_of

    (tmp_path / "grasp").mkdir()
    (tmp_path / "grasp" / OBJECTS_FILE).write_bytes(b"")
    for name, up in (("render", "grasp"), ("synth", "render")):
        (tmp_path / name).mkdir()
        (tmp_path / name / RUN_FILE).write_text(f'{{"{OBJECTS_KEY}": "{tmp_path / up}"}}')
    assert objects_dir_of(tmp_path / "synth") == (tmp_path / "grasp").resolve()
    (tmp_path / "alone").mkdir()
    with pytest.raises(HoigenError, match="no objects.parquet"):
        objects_dir_of(tmp_path / "alone")


def test_input_check_takes_the_stage_it_expects(tmp_path) -> None:
    """A grasp-stage sample passes as render's input but not where render's fields are expected."""
    from hoigen.data.runner import check_input

    ann = {
        "key": "mug_0000_000", "hand": {"side": "right", "model": "m", "global_orient": [0] * 3,
                                        "hand_pose": [0] * 45, "betas": [0] * 10, "transl": [0] * 3,
                                        "joints3d": [[0] * 3] * 21},
        "object": {"id": "mug", "category": "mug", "mesh_sha256": "x", "pose": np.eye(4).tolist(),
                   "nocs_from_mesh": np.eye(4).tolist()},
        "trajectory": {"frame": 0, "frames": 1}, "grasp": {},
    }
    sample = {"__key__": "mug_0000_000", "ann.json": ann}
    check_input(sample, tmp_path / "shard-000000.tar", "grasp")
    with pytest.raises(HoigenError, match="no field camera.K"):
        check_input(sample, tmp_path / "shard-000000.tar", "render")



def test_amodal_bits_round_trip_with_table_and_distractors():
    from hoigen.data import contract

    rng = np.random.default_rng(0)
    ids = [contract.SEG_TABLE] + [contract.distractor_seg_id(k) for k in range(contract.MAX_DISTRACTORS)]
    masks = {i: rng.random((6, 7)) > 0.5 for i in [contract.SEG_HAND, contract.SEG_OBJECT, *ids]}
    for chosen in (ids[:3], ids[:6], ids):  # table + 2 (uint8), table + 5 (uint8 limit), table + 13 (uint16)
        extras = {i: masks[i] for i in chosen}
        bits = contract.amodal_bits(masks[contract.SEG_HAND], masks[contract.SEG_OBJECT], extras)
        assert bits.dtype == (np.uint8 if max(chosen) <= 8 else np.uint16)
        back = contract.amodal_masks(bits)
        for seg_id in [contract.SEG_HAND, contract.SEG_OBJECT, *chosen]:
            assert np.array_equal(back[seg_id], masks[seg_id]), seg_id
    old = contract.amodal_masks(np.array([[3, 1, 2, 0]], dtype=np.uint8))  # a shard from before tables
    assert sorted(old) == [contract.SEG_HAND, contract.SEG_OBJECT]
