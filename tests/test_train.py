"""Training: the loss falls, background batches, exact resume, saved folders that synthesis loads, captions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hoigen.diffusion.captions import FALLBACK_CAPTION, caption_for, load_caption_hook, load_captions
from hoigen.diffusion.checkpoint import list_checkpoints
from hoigen.diffusion.options import TrainOptions
from hoigen.diffusion.pipeline import generate, load_pipeline
from hoigen.diffusion.tiny import build_tiny_pipeline
from hoigen.diffusion.train import ControlNetTrainer, unet_attention_parameters
from hoigen.diffusion.train_data import ExampleBatches
from hoigen.errors import HoigenError
from hoigen.recipe import load_recipe

SIZE = 32  # the tiny VAE halves 3 times: 4x4 latents, the smallest the tiny UNet takes
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _examples(count: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "key": f"mug_0000_{i:03d}_00",
            "image": torch.rand(3, SIZE, SIZE, generator=g) * 2 - 1,
            "conditions": torch.rand(9, SIZE, SIZE, generator=g),
            "prompt": f"a hand is grasping a mug {i}",
            "target": "image.jpg",
            "caption_source": "prompt.txt",
        }
        for i in range(count)
    ]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_falls_on_a_tiny_fixed_dataset(tmp_path):
    pipe = build_tiny_pipeline(0)
    options = TrainOptions(steps=80, lr=1e-3, text_dropout=0.0, checkpoint_every=0)
    stats = ControlNetTrainer(pipe, options, tmp_path / "m").train(ExampleBatches(_examples(4), 2, seed=0))
    losses = np.array(stats["losses"])
    assert len(losses) == 80 and np.all(np.isfinite(losses))
    first, last = losses[:15].mean(), losses[-15:].mean()
    assert last < 0.85 * first, (first, last)  # measured: about 1.07 -> 0.75


class _Recorder:
    """A background source that records which batches were drawn."""

    def __init__(self) -> None:
        self.drawn: list[int] = []
        self.inner = ExampleBatches(_examples(2, seed=5), 2, seed=1, name="background")

    def batch(self, i: int, rank: int = 0, world: int = 1) -> dict:
        self.drawn.append(i)
        return self.inner.batch(i, rank, world)


def test_bg_weight_zero_never_draws_background(tmp_path, monkeypatch):
    data = ExampleBatches(_examples(2), 2, seed=0)
    off = _Recorder()
    options = TrainOptions(steps=3, lr=1e-3, bg_mode="loss", bg_every=1, bg_weight=0.0, checkpoint_every=0)
    stats = ControlNetTrainer(build_tiny_pipeline(0), options, tmp_path / "off").train(data, bg_batches=off)
    assert off.drawn == [] and stats["bg_losses"] == [] and stats["bg_weight"] == 0.0
    on = _Recorder()
    options = TrainOptions(steps=4, lr=1e-3, bg_mode="loss", bg_every=2, bg_weight=1.0, checkpoint_every=0)
    stats = ControlNetTrainer(build_tiny_pipeline(0), options, tmp_path / "on").train(data, bg_batches=on)
    assert on.drawn == [0, 1] and len(stats["bg_losses"]) == 2

    # Through the shard entry: with --bg-weight 0 the buffer folder is never even read.
    import hoigen.diffusion.train_data as train_data

    def no_reading(*args, **kwargs):
        raise AssertionError("background buffer read although --bg-weight is 0")

    monkeypatch.setattr(train_data, "background_examples", no_reading)
    monkeypatch.setattr(train_data, "shard_examples", lambda shards, size, *a: _examples(2))
    opts = TrainOptions(
        steps=1, batch_size=2, size=SIZE, bg_dir=tmp_path / "scenery", bg_mode="loss", bg_weight=0.0,
        checkpoint_every=0,
    )
    stats = train_data.train_from_shards([tmp_path / "shard-000000.tar"], tmp_path / "cli", opts, 0, True)
    assert stats["bg_losses"] == [] and stats["data"]["background_images"] == 0


class _Stop(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_loss_curve_exactly(tmp_path):
    """Bit-identical on CPU: same losses, same weights, same CSV as a run that never stopped."""
    options = TrainOptions(
        steps=7, lr=1e-3, bg_mode="loss", bg_every=2, text_dropout=0.5,
        checkpoint_every=3, keep_checkpoints=2, ema_decay=0.9, lr_scheduler="cosine",
    )
    examples = _examples(6)

    whole = build_tiny_pipeline(0)
    full = ControlNetTrainer(whole, options, tmp_path / "whole", seed=4).train(
        ExampleBatches(examples, 2, 4), bg_batches=ExampleBatches(_examples(2, 9), 2, 4, "background")
    )

    def crash(entry):
        if entry["step"] == 5:
            raise _Stop

    out = tmp_path / "stopped"
    with pytest.raises(_Stop):
        ControlNetTrainer(build_tiny_pipeline(0), options, out, seed=4).train(
            ExampleBatches(examples, 2, 4), bg_batches=ExampleBatches(_examples(2, 9), 2, 4, "background"), log=crash
        )
    assert [step for step, _ in list_checkpoints(out)] == [3]
    assert not (out / "hoigen_train.json").exists()
    resumed_pipe = build_tiny_pipeline(0)
    resumed = ControlNetTrainer(resumed_pipe, options, out, seed=4).train(
        ExampleBatches(examples, 2, 4), bg_batches=ExampleBatches(_examples(2, 9), 2, 4, "background")
    )
    assert resumed["resumed_at_step"] == 3 and resumed["resumed_from"].endswith("step-00000003")
    assert resumed["losses"] == full["losses"] and resumed["bg_losses"] == full["bg_losses"]
    assert _equal(_state(resumed_pipe.controlnet), _state(whole.controlnet))
    assert [step for step, _ in list_checkpoints(out)] == [3, 6]
    with (out / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert [float(r["loss"]) for r in rows] == full["losses"]


def test_saved_folder_loads_in_synthesis_and_paints_the_same_images(tmp_path):
    from hoigen.diffusion.backend import StableDiffusionPipeline

    conditions = torch.rand(2, 9, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    prompts, seeds = ["a hand is grasping a mug", "a hand holding a can"], [3, 4]

    # 1. The whole folder (--model OUT), with the UNet's attention layers trained and EMA weights.
    pipe = build_tiny_pipeline(0)
    unet_before = _state(pipe.unet)
    options = TrainOptions(
        steps=2,
        lr=1e-3,
        train_unet_attention=True,
        ema_decay=0.5,
        checkpoint_every=0,
        validate_every=2,
        validation_images=2,
        validation_steps=2,
    )
    out = tmp_path / "model"
    ControlNetTrainer(pipe, options, out).train(ExampleBatches(_examples(2), 2, 0), validation=_examples(2))
    changed = [
        n for n, _ in unet_attention_parameters(pipe.unet) if not torch.equal(pipe.unet.state_dict()[n], unet_before[n])
    ]
    assert changed and all(".attn" in n for n in changed)
    frozen = [n for n in unet_before if ".attn" not in n]
    assert all(torch.equal(pipe.unet.state_dict()[n], unet_before[n]) for n in frozen)
    assert (out / "validation" / "step-00000002.png").stat().st_size > 500
    loaded, info = load_pipeline(str(out))
    assert info["kind"] == "tiny-trained"
    a = generate(pipe, conditions, prompts, seeds, steps=2)
    b = generate(loaded, conditions, prompts, seeds, steps=2)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    record = json.loads((out / "hoigen_train.json").read_text())
    assert record["ema"] is True and record["trained"] == ["controlnet", "unet attention"]

    # 2. A Stable-Diffusion-layout base + the trained ControlNet (--model BASE --controlnet OUT/controlnet).
    tiny = build_tiny_pipeline(0)
    StableDiffusionPipeline(
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=tiny.tokenizer,
        unet=tiny.unet,
        scheduler=tiny.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(tmp_path / "sd")
    base, _ = load_pipeline(str(tmp_path / "sd"))
    options = TrainOptions(steps=2, lr=1e-3, checkpoint_every=0)
    ControlNetTrainer(base, options, tmp_path / "cn-run").train(ExampleBatches(_examples(2), 2, 0))
    paired, info = load_pipeline(str(tmp_path / "sd"), controlnet=str(tmp_path / "cn-run" / "controlnet"))
    assert info["kind"] == "pretrained"
    a = generate(base, conditions, prompts, seeds, steps=2)
    b = generate(paired, conditions, prompts, seeds, steps=2)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def test_csv_log_and_8bit_adam_error(tmp_path):
    out = tmp_path / "m"
    options = TrainOptions(steps=2, lr=1e-3, checkpoint_every=0)
    ControlNetTrainer(build_tiny_pipeline(0), options, out).train(ExampleBatches(_examples(2), 2, 0))
    with (out / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["1", "2"] and all(float(r["lr"]) == 1e-3 for r in rows)
    with pytest.raises(HoigenError, match="bitsandbytes"):
        ControlNetTrainer(build_tiny_pipeline(0), TrainOptions(steps=1, use_8bit_adam=True), tmp_path / "x").train(
            _examples(1)
        )
    with pytest.raises(HoigenError, match="mixed-precision"):
        ControlNetTrainer(build_tiny_pipeline(0), TrainOptions(mixed_precision="fp8"), tmp_path / "y")


def test_example_batches_are_a_function_of_step_and_split_by_rank():
    batches = ExampleBatches(_examples(8), 2, seed=3)
    assert batches.indices(5) == ExampleBatches(_examples(8), 2, seed=3).indices(5)
    epoch = sorted(j for i in range(4) for j in batches.indices(i))
    assert epoch == list(range(8))  # one epoch = each example once
    two = [batches.indices(0, rank, 2) for rank in (0, 1)]
    assert len(two[0]) == 2 and not set(two[0]) & set(two[1])
    # Two processes share out the same examples one process sees in two consecutive steps.
    assert sorted(two[0] + two[1]) == sorted(batches.indices(0) + batches.indices(1))


def test_captions_files_hook_and_fallback(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"a_0000_000_00": "from json"}))
    (tmp_path / "c.tsv").write_text("# comment\na_0000_000_00\tfrom tsv\n\n")
    (tmp_path / "c.jsonl").write_text('{"key": "a_0000_000_00", "caption": "from jsonl"}\n')
    for name, text in (("c.json", "from json"), ("c.tsv", "from tsv"), ("c.jsonl", "from jsonl")):
        assert load_captions(tmp_path / name) == {"a_0000_000_00": text}
    (tmp_path / "bad.tsv").write_text("no tab here\n")
    with pytest.raises(HoigenError, match=r"bad.tsv:1"):
        load_captions(tmp_path / "bad.tsv")

    image = np.zeros((4, 4, 3), np.uint8)
    sample = {"ann.json": {"object": {"category": "mug"}}}
    assert caption_for("k", sample, image) == (FALLBACK_CAPTION.format(object="mug"), "fallback")
    assert caption_for("k", {**sample, "prompt.txt": "painted"}, image) == ("painted", "prompt.txt")
    assert caption_for("k", {**sample, "prompt.txt": "painted"}, image, {"k": "file"}) == ("file", "file")
    (tmp_path / "my_captioner.py").write_text(
        "def caption(image, ann):\n    return f\"a {ann['object']['category']} of {image.shape[1]} px\"\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        hook = load_caption_hook("my_captioner:caption")
    finally:
        sys.path.remove(str(tmp_path))
    assert caption_for("k", sample, image, None, hook) == ("a mug of 4 px", "hook")
    with pytest.raises(HoigenError, match="module:function"):
        load_caption_hook("no_colon")


def test_train_recipes_are_valid():
    tiny = load_recipe(ROOT / "recipes" / "train-tiny.yaml")
    assert tiny.train is not None and tiny.train.steps <= 300 and tiny.train.model == "tiny-random"
    paper = load_recipe(ROOT / "recipes" / "train-dexycb.yaml")
    assert paper.train.lr == 1e-5 and paper.train.size == 512 and paper.train.steps == 50000
    assert paper.train.bg_mode == "loss" and paper.train.loss_weight == 1.0 and paper.train.text_dropout == 0.1


def test_shard_examples_decode_on_access_like_synthesis_does(tmp_path):
    from hoigen.data.shards import write_shard
    from hoigen.diffusion.conditions import stack_conditions
    from hoigen.diffusion.train_data import ShardExamples, image_tensor

    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        seg = np.zeros((40, 40), np.uint8)
        seg[5:20, 5:20], seg[20:35, 10:30] = 1, 2
        sample = {
            "__key__": f"mug_0000_{i:03d}_00",
            "ann.json": {"object": {"category": "mug"}},
            "image.jpg": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
            "normal.png": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
            "seg.png": seg,
            "skeleton.png": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
        }
        if i == 1:
            sample["prompt.txt"] = "a red mug in a kitchen"
        samples.append(sample)
    shard = tmp_path / "shard-000000.tar"
    write_shard(shard, samples)
    examples = ShardExamples([shard], SIZE, captions={"mug_0000_002_00": "from the file"})
    assert len(examples) == 3 and not hasattr(examples, "tensors")
    assert [e["prompt"] for e in examples.info] == [
        "a hand is grasping a mug",
        "a red mug in a kitchen",
        "from the file",
    ]
    assert [e["caption_source"] for e in examples.info] == ["fallback", "prompt.txt", "file"]
    from hoigen.data.shards import read_shard

    for i, stored in enumerate(read_shard(shard)):  # what was written, decoded as synthesis decodes it
        example = examples[i]
        want = stack_conditions(stored["normal.png"], stored["seg.png"], stored["skeleton.png"], SIZE)
        assert torch.equal(example["conditions"], want)
        assert torch.equal(example["image"], image_tensor(stored["image.jpg"], SIZE))
    assert [e["key"] for e in examples[1:]] == ["mug_0000_001_00", "mug_0000_002_00"]
