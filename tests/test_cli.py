"""The CLI end to end on a tiny chain: every subcommand, determinism, resume and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from clirun import run_hoigen as hoigen

from hoigen.data.shards import list_shards, read_shard


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_shards(folder)}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """grasp -> render -> synthesize -> export on one mug, one grasp, two frames, 64 px."""
    root = tmp_path_factory.mktemp("chain")
    steps = [
        ("grasp", "--categories", "mug,can", "--grasps", "1", "--frames", "2", "--out", root / "grasp"),
        ("render", "--in", root / "grasp", "--views", "2", "--size", "64", "--out", root / "render"),
        ("synthesize", "--in", root / "render", "--steps", "2", "--size", "64", "--out", root / "synth"),
        ("export", "--in", root / "synth", "--format", "nocs", "--out", root / "nocs"),
    ]
    for args in steps:
        code, _ = hoigen(*args, "--quiet")
        assert code == 0, args
    return root


def test_every_stage_writes_shards_index_and_run_json(chain: Path) -> None:
    for stage, count in (("grasp", 4), ("render", 8), ("synth", 8)):
        folder = chain / stage
        assert len(list_shards(folder)) == 2
        assert pq.read_table(folder / "index.parquet").num_rows == count
        run = json.loads((folder / "run.json").read_text())
        assert run["seed"] == 0 and "versions" in run
    run = json.loads((chain / "grasp" / "run.json").read_text())
    assert run["hand_model"]["name"] == "hoigen-embedded-hand-v1" and run["hand_model"]["embedded"] is True
    synth_run = json.loads((chain / "synth" / "run.json").read_text())
    assert synth_run["diffusion_model"]["kind"] == "tiny-random"
    assert (chain / "grasp" / "objects.parquet").exists()


def test_render_and_synth_samples_follow_the_contract(chain: Path) -> None:
    sample = next(read_shard(list_shards(chain / "synth")[0]))
    ann = sample["ann.json"]
    assert sample["__key__"].count("_") == 3
    assert len(ann["hand"]["joints3d"]) == 21 and len(ann["hand"]["joints2d"]) == 21
    assert len(ann["hand"]["hand_pose"]) == 45 and len(ann["hand"]["betas"]) == 10
    assert np.asarray(ann["camera"]["K"]).shape == (3, 3)
    assert sample["depth.png"].dtype == np.uint16 and sample["seg.png"].ndim == 2
    assert set(np.unique(sample["seg.png"])) <= {0, 1, 3} | {i["seg_id"] for i in ann["instances"]}  # 3: the table
    assert sample["image.jpg"].shape == (64, 64, 3)
    gen = sample["gen.json"]
    assert gen["kind"] == "tiny-random" and gen["steps"] == 2
    assert "mug" in sample["prompt.txt"] or "can" in sample["prompt.txt"]
    # projected 3D joints equal the stored 2D joints
    K, w2c = np.asarray(ann["camera"]["K"]), np.asarray(ann["camera"]["world_to_cam"])
    j = np.asarray(ann["hand"]["joints3d"]) @ w2c[:3, :3].T + w2c[:3, 3]
    uv = (j @ K.T)[:, :2] / j[:, 2:]
    assert np.allclose(uv, ann["hand"]["joints2d"], atol=1e-3)


def test_export_writes_the_nocs_layout(chain: Path) -> None:
    nocs = chain / "nocs"
    lines = (nocs / "train_list.txt").read_text().split()
    assert len(lines) == 8
    first = nocs / (lines[0] + "_color.png")
    for suffix in ("_color.png", "_coord.png", "_depth.png", "_mask.png", "_meta.txt", "_hand.json"):
        assert Path(str(first).replace("_color.png", suffix)).exists(), suffix
    meta = Path(str(first).replace("_color.png", "_meta.txt")).read_text().split()
    assert meta[0] == "1" and meta[1] in {"4", "6"}  # can or mug class id of the NOCS release


def test_export_mixed_with_a_real_set(chain: Path, tmp_path: Path) -> None:
    import shutil

    real = tmp_path / "camera"
    shutil.copytree(chain / "nocs" / "train", real / "train")  # any NOCS-layout folder will do
    out = tmp_path / "mixed"
    args = ("export", "--in", chain / "synth", "--out", out, "--mix", real, "--ratio", "0.25", "--mix-mode", "add")
    assert hoigen(*args, "-q")[0] == 0
    lines = (out / "mixed_train_list.txt").read_text().split()
    assert sum(line.startswith("real/") for line in lines) == 8 and len(lines) == 8 + 3  # 8 real, 25% synthetic


def test_same_seed_gives_identical_shards(chain: Path, tmp_path: Path) -> None:
    assert (
        hoigen("grasp", "--categories", "mug,can", "--grasps", "1", "--frames", "2", "--out", tmp_path / "grasp", "-q")[
            0
        ]
        == 0
    )
    assert shard_bytes(tmp_path / "grasp") == shard_bytes(chain / "grasp")
    assert (
        hoigen(
            "render",
            "--in",
            tmp_path / "grasp",
            "--views",
            "2",
            "--size",
            "64",
            "--out",
            tmp_path / "render",
            "--workers",
            "2",
            "-q",
        )[0]
        == 0
    )
    assert shard_bytes(tmp_path / "render") == shard_bytes(chain / "render")


def test_resume_rebuilds_only_the_missing_shard(chain: Path, tmp_path: Path) -> None:
    import shutil

    synth = tmp_path / "synth"
    shutil.copytree(chain / "synth", synth)
    before = {p.name: p.stat().st_mtime_ns for p in list_shards(synth)}
    args = ("synthesize", "--in", chain / "render", "--steps", "2", "--size", "64", "--out", synth, "-q")
    assert hoigen(*args)[0] == 0
    assert {p.name: p.stat().st_mtime_ns for p in list_shards(synth)} == before
    (synth / "shard-000001.tar").unlink()
    assert hoigen(*args)[0] == 0
    after = {p.name: p.stat().st_mtime_ns for p in list_shards(synth)}
    assert after["shard-000000.tar"] == before["shard-000000.tar"]
    assert shard_bytes(synth) == shard_bytes(chain / "synth")


def test_train_saves_a_pipeline_synthesize_loads(chain: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    assert hoigen("train", "--in", chain / "synth", "--steps", "2", "--batch-size", "2", "--out", model, "-q")[0] == 0
    assert (model / "controlnet").is_dir() and (model / "model_index.json").exists()
    record = json.loads((model / "hoigen_train.json").read_text())
    assert record["steps"] == 2 and record["data"]["targets"] == ["image.jpg"] and record["data"]["samples"] == 8
    out = tmp_path / "synth"
    assert (
        hoigen(
            "synthesize", "--in", chain / "render", "--model", model, "--steps", "2", "--size", "64", "--out", out, "-q"
        )[0]
        == 0
    )
    gen = next(read_shard(list_shards(out)[0]))["gen.json"]
    assert gen["model"] == str(model)


def test_inspect_writes_a_contact_sheet(chain: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sheet = tmp_path / "sheet.png"
    code, _ = hoigen("inspect", chain / "synth", "--sheet", sheet, capsys=capsys)
    assert code == 0 and sheet.stat().st_size > 1000


def test_run_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "seed: 3\nout: %s\ngrasp: {categories: [can], grasps: 1, frames: 2}\n"
        "render: {views: 1, size: 64}\nexport: {format: nocs}\n" % (tmp_path / "out")
    )
    assert hoigen("run", recipe, "-q")[0] == 0
    assert (tmp_path / "out" / "nocs" / "train_list.txt").exists()
    assert (tmp_path / "out" / "contact_sheet.png").exists()


@pytest.mark.parametrize(
    "make_args, needle, expected_code",
    [
        (lambda t: ("grasp", "--objects", t / "missing", "--out", t / "o"), "missing", 1),
        (lambda t: ("grasp", "--objects", t / "meshes", "--out", t / "o"), "bad.obj", 1),
        (lambda t: ("synthesize", "--in", t / "render", "--prompts", t / "nope.txt", "--out", t / "o"), "nope.txt", 1),
        (lambda t: ("run", t / "bad.yaml"), "did you mean 'grasp'", 2),  # usage errors: exit 2
        (lambda t: ("grasp", "--frames", "0", "--out", t / "o"), "--frames must be at least 1", 2),
    ],
)
def test_bad_inputs_exit_nonzero_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, make_args, needle, expected_code
) -> None:
    (tmp_path / "meshes").mkdir()
    (tmp_path / "meshes" / "bad.obj").write_text("this is not a mesh\n")
    (tmp_path / "render").mkdir()
    (tmp_path / "render" / "shard-000000.tar").write_bytes(b"")
    (tmp_path / "render" / "run.json").write_text('{"stage": "render"}')  # an input needs its record
    (tmp_path / "bad.yaml").write_text("grasps: {}\n")
    code, err = hoigen(*make_args(tmp_path), capsys=capsys)
    lines = [line for line in err.strip().splitlines() if line]
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_truncated_input_shard_names_it_and_keeps_finished_output(
    chain: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    grasp = tmp_path / "grasp"
    shutil.copytree(chain / "grasp", grasp)
    data = (grasp / "shard-000001.tar").read_bytes()
    (grasp / "shard-000001.tar").write_bytes(data[: len(data) // 2])
    out = tmp_path / "render"
    code, err = hoigen("render", "--in", grasp, "--views", "2", "--size", "64", "--out", out, capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "shard-000001.tar" in err and "truncated" in err
    assert [p.name for p in list_shards(out)] == ["shard-000000.tar"]  # the finished shard is kept
    assert not list(out.glob("*.tmp-*"))


def test_synthesize_from_a_mesh_folder_and_prompts(tmp_path: Path) -> None:
    """The user's headline command: hoigen synthesize --objects DIR --prompts FILE."""
    import trimesh

    meshes = tmp_path / "ycb" / "025_mug" / "google_16k"
    meshes.mkdir(parents=True)
    trimesh.creation.cylinder(radius=40.0, height=95.0, sections=24).export(meshes / "textured.obj")  # millimetres
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# appearance\na red {object} {background}\n")
    out = tmp_path / "synth"
    code, _ = hoigen("synthesize", "--objects", tmp_path / "ycb", "--prompts", prompts, "--steps", "2",
                     "--size", "64", "--out", out, "-q")
    assert code == 0
    samples = [s for p in list_shards(out) for s in read_shard(p, fields=("prompt.txt", "ann.json"))]
    assert len(samples) == 2 * 8 * 2  # default grasps x frames x views
    assert all(s["prompt.txt"].startswith("a red mug ") for s in samples)
    assert samples[0]["ann.json"]["object"]["id"] == "025-mug"
    assert (out / "work" / "render" / "index.parquet").exists()


def test_assets_build_hand_writes_both_hands(tmp_path: Path) -> None:
    """The CLI writes what build_hand_files writes (their equality to the shipped files: test_hand.py)."""
    from hoigen.hand.model import MANO_KEYS, load_mano_pickle

    assert hoigen("assets", "build-hand", "--out", tmp_path)[0] == 0
    for name in ("MANO_RIGHT.pkl", "MANO_LEFT.pkl"):
        assert set(MANO_KEYS) <= set(load_mano_pickle(tmp_path / name))
