"""``hoigen synthesize`` through the console entry point: new options, videos, byte-identical reruns, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clirun import run_hoigen as hoigen
from synthetic import render_ann

from hoigen.data.shards import ShardWriter, list_shards, read_shard

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def render_dir(tmp_path_factory) -> Path:
    """A render folder: one shard, two views of a three-frame trajectory (synthetic maps)."""
    folder = tmp_path_factory.mktemp("render")
    rng = np.random.default_rng(0)
    with ShardWriter(folder / "shard-000000.tar") as writer:
        for view in (0, 1):
            for frame in range(3):
                seg = np.zeros((SIZE, SIZE), np.uint8)
                seg[6 + frame : 18 + frame, 6:18] = 1
                seg[12:26, 14:28] = 2
                writer.write(
                    {
                        "__key__": f"mug-1_0000_{frame:03d}_{view:02d}",
                        "normal.png": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) * (seg > 0)[..., None],
                        "seg.png": seg,
                        "skeleton.png": np.zeros((SIZE, SIZE, 3), np.uint8),
                        "ann.json": render_ann(f"mug-1_0000_{frame:03d}_{view:02d}", frame, 3, SIZE),
                    }
                )
    (folder / "run.json").write_text(json.dumps({"stage": "render"}))
    (folder / "objects.parquet").write_bytes(b"")  # synthesize only records where the meshes are
    return folder


ARGS = ("--steps", "1", "--size", SIZE, "--batch-size", 4, "--quiet")


def test_synthesize_video_options_and_byte_identical_rerun(render_dir, tmp_path, capsys):
    extra = ("--video", "--images-per-condition", "2", "--scheduler", "dpm++", "--condition-scales", "seg=0.5",
             "--blank-uncond", "--negative-prompt", "blurry", "--anchor", "first", "--fps", "4")
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "a", *ARGS, *extra, capsys=capsys)
    assert code == 0, err
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "b", *ARGS, *extra, capsys=capsys)
    assert code == 0, err
    a, b = list_shards(tmp_path / "a"), list_shards(tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]  # a rerun is byte-identical
    videos = sorted(p.name for p in (tmp_path / "a" / "videos").iterdir())
    assert videos == [
        "mug-1_0000_00", "mug-1_0000_00.mp4", "mug-1_0000_00_1", "mug-1_0000_00_1.mp4",
        "mug-1_0000_01", "mug-1_0000_01.mp4", "mug-1_0000_01_1", "mug-1_0000_01_1.mp4",
    ]
    sample = next(read_shard(a[0]))
    gen = sample["gen.json"]
    assert gen["scheduler"] == "dpm++" and gen["condition_scales"]["seg"] == 0.5 and gen["blank_uncond"] is True
    assert gen["video"]["anchor"] == "mug-1_0000_000_00" and len(gen["images"]) == 2
    assert "image_1.jpg" in sample and sample["prompt.txt"]
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["diffusion_model"]["kind"] == "tiny-random"


@pytest.mark.parametrize(
    "args, match, expected_code",
    [  # an option's own check is a usage error (exit 2); what only loading finds is exit 1
        (("--scheduler", "euler"), "--scheduler must be one of ddim, unipc, dpm++", 2),
        (("--condition-scales", "depth=1"), "unknown map 'depth'", 2),
        (("--images-per-condition", "0"), "--images-per-condition must be at least 1", 2),
        (("--anchor", "centre"), "--anchor must be", 2),
        (("--dtype", "float8"), "unknown dtype", 1),
        (("--model", "/nonexistent/sd15"), "sd15: Stable Diffusion folder not found", 1),
    ],
)
def test_synthesize_bad_options_are_one_line_errors(render_dir, tmp_path, capsys, args, match, expected_code):
    code, err = hoigen("synthesize", "--in", render_dir, "--out", tmp_path / "x", *ARGS, *args, capsys=capsys)
    assert code == expected_code and match in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
