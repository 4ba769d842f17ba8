"""Tests for hoigen.diffusion: conditions, prompts, the tiny pipeline, generation, training, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hoigen.diffusion.conditions import (
    CONDITIONING_CHANNELS,
    SEG_HAND_RGB,
    SEG_OBJECT_RGB,
    blank_conditions,
    seg_to_rgb,
    split_conditions,
    stack_conditions,
)
from hoigen.diffusion.options import TrainOptions
from hoigen.diffusion.pipeline import generate, load_pipeline
from hoigen.diffusion.prompts import DEFAULT_PROMPTS, fill_prompt, load_prompts
from hoigen.diffusion.tiny import TINY_MODEL_NAME, build_tiny_pipeline
from hoigen.diffusion.train import ControlNetTrainer
from hoigen.errors import HoigenError

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    pipeline, info = load_pipeline()
    assert info["kind"] == TINY_MODEL_NAME and info["model"] == TINY_MODEL_NAME
    return pipeline


def _conditions(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, CONDITIONING_CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- conditions -------------------------------------------------------------------------------------


def test_seg_to_rgb_uses_hoidiffusion_colours():
    seg = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    rgb = seg_to_rgb(seg)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    assert tuple(rgb[0, 1]) == SEG_HAND_RGB == (128, 128, 128)
    assert tuple(rgb[1, 0]) == SEG_OBJECT_RGB == (153, 51, 51)
    assert tuple(rgb[1, 1]) not in {(0, 0, 0), SEG_HAND_RGB, SEG_OBJECT_RGB}


def test_stack_conditions_layout_range_and_resize():
    rng = np.random.default_rng(0)
    normal = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    skeleton = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    seg = np.zeros((40, 48), dtype=np.uint8)
    seg[10:30, 5:20] = 1
    seg[10:30, 25:45] = 2
    full = stack_conditions(normal, seg, skeleton)
    assert full.shape == (9, 40, 48) and full.dtype == torch.float32
    assert float(full.min()) >= 0.0 and float(full.max()) <= 1.0
    assert torch.allclose(full[0:3], torch.from_numpy(normal).permute(2, 0, 1).float() / 255)
    assert torch.allclose(full[6:9], torch.from_numpy(skeleton).permute(2, 0, 1).float() / 255)
    assert torch.allclose(full[3:6, 15, 10] * 255, torch.tensor(SEG_HAND_RGB, dtype=torch.float32))
    assert torch.allclose(full[3:6, 15, 30] * 255, torch.tensor(SEG_OBJECT_RGB, dtype=torch.float32))
    maps = split_conditions(full)
    assert np.array_equal(maps["normal"], normal) and np.array_equal(maps["skeleton"], skeleton)
    assert np.array_equal(maps["seg"], seg_to_rgb(seg))

    small = stack_conditions(normal, seg, skeleton, size=16)
    assert small.shape == (9, 16, 16)
    # Nearest-neighbour resizing keeps the segmentation colours pure.
    colours = {tuple(c) for c in (small[3:6].permute(1, 2, 0).reshape(-1, 3) * 255).round().int().tolist()}
    assert colours <= {(0, 0, 0), SEG_HAND_RGB, SEG_OBJECT_RGB}
    with pytest.raises(ValueError):
        stack_conditions(normal, seg[:20], skeleton)


def test_blank_conditions_are_zero():
    blank = blank_conditions(8, 12)
    assert blank.shape == (9, 8, 12) and float(blank.abs().sum()) == 0.0


# --- prompts ----------------------------------------------------------------------------------------


def test_load_prompts_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\na hand holding a {object}, {background}\n  # indented comment\nplain\n")
    assert load_prompts(path) == ["a hand holding a {object}, {background}", "plain"]


def test_fill_prompt_and_errors():
    assert fill_prompt("a {object} {background}", object="mug", background="on a desk") == "a mug on a desk"
    assert fill_prompt("no placeholders {{literal}}") == "no placeholders {literal}"
    for template in DEFAULT_PROMPTS:
        assert "{" not in fill_prompt(template, object="mug", background="outdoors")
    with pytest.raises(HoigenError, match="background"):
        fill_prompt("a {object} {background}", object="mug")
    with pytest.raises(HoigenError, match="colour"):
        fill_prompt("a {colour} {object}", object="mug")


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "not found"),
        (b"# only a comment\n\n", "no prompts"),
        (b"a hand \xff\xfe holding\n", "UTF-8"),
        (b"ok {object}\nbad {weather}\n", r":2: .*weather"),
    ],
)
def test_load_prompts_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "my_prompts.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(HoigenError, match=match) as error:
        load_prompts(path)
    assert "my_prompts.txt" in str(error.value)


# --- tiny pipeline and generation -------------------------------------------------------------------


def test_tiny_pipeline_is_deterministic_and_leaves_global_rng_alone():
    rng_state = torch.random.get_rng_state()
    a, b = build_tiny_pipeline(0), build_tiny_pipeline(0)
    assert torch.equal(rng_state, torch.random.get_rng_state())
    for name in ("unet", "vae", "text_encoder", "controlnet"):
        assert _equal_states(_state(getattr(a, name)), _state(getattr(b, name))), name
    other = build_tiny_pipeline(1)
    assert not _equal_states(_state(a.unet), _state(other.unet))
    assert a.controlnet.config.conditioning_channels == CONDITIONING_CHANNELS
    assert a.vae_scale_factor == 8


def test_generate_shapes_and_seeds(pipe):
    conditions = _conditions(2)
    prompts = ["a hand grasping a mug, on a table"] * 2
    first = generate(pipe, conditions, prompts, [5, 6], steps=2, negative_prompt="blurry")
    again = generate(pipe, conditions, prompts, [5, 6], steps=2, negative_prompt="blurry")
    assert len(first) == 2
    for image in first:
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert all(x.tobytes() == y.tobytes() for x, y in zip(first, again, strict=True))
    other_seed = generate(pipe, conditions[:1], prompts[:1], [7], steps=2, negative_prompt="blurry")[0]
    assert np.abs(other_seed.astype(int) - first[0]).mean() > 1.0


def test_generate_is_independent_of_batching(pipe):
    conditions = _conditions(3, seed=1)
    prompts = ["a hand holding a bottle", "a hand holding a bowl", "a hand holding a can"]
    seeds = [11, 12, 13]
    batched = generate(pipe, conditions, prompts, seeds, steps=2)
    alone = [generate(pipe, conditions[i : i + 1], [prompts[i]], [seeds[i]], steps=2)[0] for i in range(3)]
    for x, y in zip(batched, alone, strict=True):
        # Batched convolutions round differently: at most one grey level on a few pixels.
        diff = np.abs(x.astype(int) - y)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    exact = generate(pipe, conditions, prompts, seeds, steps=2, per_sample=True)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(exact, alone, strict=True))


def test_generate_rejects_bad_inputs(pipe):
    with pytest.raises(HoigenError, match="multiple of 8"):
        generate(pipe, torch.rand(1, 9, 60, 60), ["x"], [0], steps=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        generate(pipe, _conditions(1) * 2 - 1, ["x"], [0], steps=2)
    with pytest.raises(ValueError):
        generate(pipe, _conditions(2), ["x"], [0, 1], steps=2)


# --- training and loading ---------------------------------------------------------------------------


def _batches(count: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1,
            "conditions": torch.rand(2, 9, SIZE, SIZE, generator=g),
            "prompt": ["a hand grasping a mug", "a hand holding a can"],
        }
        for _ in range(count)
    ]


def test_train_saves_and_reloads(tmp_path):
    pipe = build_tiny_pipeline(0)
    before = _state(pipe.controlnet)
    unet_before = _state(pipe.unet)
    logged = []
    out = tmp_path / "trained"
    options = TrainOptions(steps=3, lr=1e-3, bg_mode="loss", bg_every=2)
    stats = ControlNetTrainer(pipe, options, out, seed=3).train(
        _batches(2, 0), bg_batches=_batches(1, 9), log=logged.append
    )
    assert stats["steps"] == 3 and len(stats["losses"]) == 3 and len(stats["bg_losses"]) == 1
    assert [entry["step"] for entry in logged] == [1, 2, 3] and "bg_loss" in logged[1]
    assert np.isfinite(stats["first_loss"]) and np.isfinite(stats["last_loss"])
    trained = _state(pipe.controlnet)
    assert not _equal_states(before, trained)
    assert _equal_states(unet_before, _state(pipe.unet))  # the UNet is frozen

    record = json.loads((out / "hoigen_train.json").read_text())
    assert record["steps"] == 3 and record["seed"] == 3 and record["losses"] == stats["losses"]
    assert record["base"]["kind"] == TINY_MODEL_NAME

    reloaded, info = load_pipeline(str(out))
    assert info["kind"] == "tiny-trained" and info["model"] == str(out)
    assert _equal_states(trained, _state(reloaded.controlnet))
    conditions = _conditions(1, seed=4)
    a = generate(pipe, conditions, ["a mug"], [1], steps=2)[0]
    b = generate(reloaded, conditions, ["a mug"], [1], steps=2)[0]
    assert a.tobytes() == b.tobytes()

    # Same seed and data -> the same weights.
    twin = build_tiny_pipeline(0)
    ControlNetTrainer(twin, options, tmp_path / "twin", seed=3).train(_batches(2, 0), bg_batches=_batches(1, 9))
    assert _equal_states(trained, _state(twin.controlnet))


def test_load_pipeline_from_sd_folder_and_controlnet(tmp_path):
    from hoigen.diffusion.backend import StableDiffusionPipeline

    tiny = build_tiny_pipeline(0)
    sd = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    sd.save_pretrained(tmp_path / "sd")
    tiny.controlnet.save_pretrained(tmp_path / "cn")

    fresh, info = load_pipeline(str(tmp_path / "sd"))
    assert info["kind"] == "untrained-controlnet"
    assert fresh.controlnet.config.conditioning_channels == CONDITIONING_CHANNELS
    assert generate(fresh, _conditions(1), ["a mug"], [0], steps=2)[0].shape == (SIZE, SIZE, 3)

    paired, info = load_pipeline(str(tmp_path / "sd"), controlnet=str(tmp_path / "cn"))
    assert info["kind"] == "pretrained" and info["controlnet"] == str(tmp_path / "cn")
    assert _equal_states(_state(tiny.controlnet), _state(paired.controlnet))


def test_load_pipeline_errors_name_the_model(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_model"
    with pytest.raises(HoigenError, match="no_such_model"):
        load_pipeline(str(missing))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HoigenError, match="huggingface-cli download someone/not-a-model"):
        load_pipeline("someone/not-a-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HoigenError, match="empty"):
        load_pipeline(str(empty))
