"""The shipped ``tiny-trained`` stand-in: it learned the conditions (on renders it never saw), it is
labelled as what it is, and its build is deterministic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clirun import run_hoigen as hoigen

from hoigen import api
from hoigen.data.shards import list_shards, read_shard
from hoigen.diffusion.measure import background_colour, condition_agreement, foreground, iou, render_samples
from hoigen.diffusion.tiny import TINY_TRAINED_DIR, TINY_TRAINED_RECORD, TINY_TRAINED_WEIGHTS, load_tiny_trained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).parents[1]
UNSEEN_SEED = 7  # the asset was trained on recipes/tiny-trained.yaml's renders: seed 1, no laptops
UNSEEN_CATEGORIES = ["laptop", "mug", "bottle"]


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> Path:
    """Renders the model never saw: another seed (other objects, grasps, cameras) and an unseen category."""
    work = tmp_path_factory.mktemp("unseen")
    api.grasp(None, work / "grasp", categories=UNSEEN_CATEGORIES, grasps=1, frames=2, seed=UNSEEN_SEED, quiet=True)
    api.render(  # the scenes it was trained on: no table, no distractors (recipes/tiny-trained.yaml)
        work / "grasp", work / "render", views=2, size=64, seed=UNSEEN_SEED, quiet=True, table=False, distractors=0
    )
    return work / "render"


def test_measure_pieces_on_known_masks():
    shade = np.zeros((8, 8, 3), np.uint8)
    seg = np.zeros((8, 8), np.uint8)
    seg[2:6, 2:6] = 1
    shade[seg == 1] = (200, 150, 120)
    shade[0, 0] = (10, 20, 30)  # one background pixel off black: the median ignores it
    bg = background_colour(shade, seg)
    assert bg.tolist() == [0.0, 0.0, 0.0]
    painted = np.full((8, 8, 3), 20, np.uint8)  # within 32 levels of black: background
    painted[2:6, 2:4] = 90  # half the object
    assert foreground(painted, bg).sum() == 8
    assert iou(foreground(painted, bg), seg != 0) == pytest.approx(0.5)
    assert iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_tiny_trained_follows_the_conditions_on_unseen_renders(unseen):
    """The learning test: painted images agree with their conditions, and the conditions matter."""
    from hoigen.diffusion.pipeline import load_pipeline

    samples = render_samples(unseen)
    assert len(samples) >= 8 and any(s["ann.json"]["object"]["category"] == "laptop" for s in samples)
    pipe, info = load_pipeline("tiny-trained", dtype="float32")
    assert info["kind"] == "tiny-trained" and "not Stable Diffusion" in info["note"]
    result = condition_agreement(pipe, samples)
    assert result["iou"] >= 0.5, result
    assert result["iou"] - result["iou_blind"] >= 0.3, result
    assert result["error"] < result["error_blind"], result


def test_asset_is_small_recorded_and_trained_on_other_data():
    weights = TINY_TRAINED_DIR / TINY_TRAINED_WEIGHTS
    assert weights.stat().st_size < 5_000_000
    record = json.loads((TINY_TRAINED_DIR / TINY_TRAINED_RECORD).read_text())
    assert record["kind"] == "tiny-trained" and record["storage"] == "float16"
    assert "laptop" not in record["data"]["categories"]
    recipe = (ROOT / "recipes" / "tiny-trained.yaml").read_text()
    assert f"seed: {UNSEEN_SEED}\n" not in recipe and "laptop" not in recipe.split("categories:")[1].split("\n")[0]
    _, loaded = load_tiny_trained()
    assert len(loaded["weights_sha256"]) == 64


def test_synthesize_labels_tiny_trained_and_uses_64px(unseen, tmp_path, capsys):
    out = tmp_path / "synth"
    code, err = hoigen("synthesize", "--in", unseen, "--out", out, "--model", "tiny-trained", "--steps", "2",
                       "--quiet", capsys=capsys)
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    assert run["diffusion_model"]["kind"] == "tiny-trained"
    sample = next(read_shard(list_shards(out)[0], fields=("gen.json", "image.jpg")))
    assert sample["gen.json"]["kind"] == "tiny-trained"
    assert sample["image.jpg"].shape == (64, 64, 3)


def _build(render: Path, out: Path) -> None:
    """``python -m hoigen.diffusion.tiny_build`` in a fresh process (as ``make tiny-trained`` runs it), 2 + 2 steps."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = ["--vae-steps", "2", "--steps", "2", "--quiet", "--recipe", "test"]
    cmd = [sys.executable, "-m", "hoigen.diffusion.tiny_build", str(render), "--out", str(out)]
    cmd += ["--work", f"{out}-work"]
    done = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_build_is_deterministic(unseen, tmp_path):
    """Two builds of the same data give the same bytes; the result loads and paints."""
    from hoigen.diffusion.pipeline import generate

    _build(unseen, tmp_path / "a")
    _build(unseen, tmp_path / "b")
    for name in (TINY_TRAINED_WEIGHTS, TINY_TRAINED_RECORD):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    pipe, record = load_tiny_trained(tmp_path / "a")
    assert record["data"]["samples"] == len(render_samples(unseen)) and record["data"]["render_seed"] == UNSEEN_SEED
    assert pipe.vae.config.scaling_factor == pytest.approx(record["vae_scaling_factor"])
    conds = torch.zeros((1, 9, 64, 64))
    image = generate(pipe, conds, ["a hand"], [0], steps=1, guidance=1.0)[0]
    assert image.shape == (64, 64, 3)
