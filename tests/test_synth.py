"""Synthesis with real-weight loading paths, fused conditions, schedulers, scales and video attention.

Every test runs the tiny pipeline on CPU after a save to and a reload from a local diffusers folder
with the hub switched off (HF_HUB_OFFLINE=1), the path real weights take. Its ControlNet's
zero-initialised output convolutions get small random weights first, so the conditions matter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hoigen.data.runner import StageContext
from hoigen.data.schema import derive_seed
from hoigen.diffusion.conditions import (
    CONDITIONING_CHANNELS,
    parse_condition_scales,
    scale_conditions,
    stack_conditions,
)
from hoigen.diffusion.pipeline import cached_condition_encoding, generate, load_pipeline, resolve_dtype
from hoigen.diffusion.schedulers import SCHEDULER_NAMES, set_scheduler
from hoigen.diffusion.tiny import build_tiny_pipeline
from hoigen.diffusion.video import (
    AnchorFrameAttnProcessor,
    anchor_attention,
    anchor_index,
    trajectory_groups,
    write_mp4,
)
from hoigen.errors import HoigenError

SIZE = 32
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _live_controlnet(pipe, seed: int = 1) -> None:
    """Random (He-initialised) condition encoder and zero convolutions, so that the conditions change images.

    The ControlNet copied from the UNet has zero output convolutions and a condition encoder whose
    default initialisation shrinks the signal until the biases dominate; a trained one does neither.
    """
    g = torch.Generator().manual_seed(seed)
    net = pipe.controlnet
    embedding = net.controlnet_cond_embedding
    with torch.no_grad():
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            conv.bias.zero_()
        embedding.conv_out.weight.mul_(3.0)
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A trained-looking pipeline folder (model_index.json + controlnet/), as `hoigen train` writes."""
    from hoigen.diffusion.backend import quiet

    pipe = build_tiny_pipeline(0)
    _live_controlnet(pipe)
    out = tmp_path_factory.mktemp("model") / "hoi"
    with quiet():
        pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pipe(folder):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        loaded, info = load_pipeline(str(folder))
    finally:
        mp.undo()
    assert info["kind"] == "pretrained" and info["dtype"] == "float32"
    return loaded


def _conds(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, CONDITIONING_CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


# --- loading ----------------------------------------------------------------------------------------


def test_fused_controlnet_reloads_offline_and_runs(pipe, folder):
    assert pipe.controlnet.config.conditioning_channels == CONDITIONING_CHANNELS == 9
    first = generate(pipe, _conds(2), ["a hand holding a mug"] * 2, [1, 2], steps=STEPS)
    again = generate(pipe, _conds(2), ["a hand holding a mug"] * 2, [1, 2], steps=STEPS)
    assert first[0].shape == (SIZE, SIZE, 3) and first[0].dtype == np.uint8
    assert _same(first, again)  # a rerun is byte-identical
    other = generate(pipe, _conds(1), ["a hand holding a mug"], [3], steps=STEPS)[0]
    assert _diff(first[0], other) > 1.0  # another seed, another image
    changed = generate(pipe, _conds(1, seed=9), ["a hand holding a mug"], [1], steps=STEPS)[0]
    assert _diff(first[0], changed) > 0.0  # the 9-channel conditions steer the image ...
    # ... through the ControlNet's residuals, which each map's channels move
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))

    def residuals(conds: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            down, mid = pipe.controlnet(latents, 10, text, controlnet_cond=conds, return_dict=False)
        return torch.cat([r.flatten() for r in [*down, mid]])

    base = residuals(_conds(1))
    for first_channel in (0, 3, 6):  # normal, seg, skeleton
        other = _conds(1).clone()
        other[:, first_channel : first_channel + 3] = 0
        assert (residuals(other) - base).abs().mean() > 1e-3 * base.abs().mean()


def test_controlnet_from_the_train_folder_and_sd_folder(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = build_tiny_pipeline(0)
    from hoigen.diffusion.backend import StableDiffusionPipeline, quiet

    sd = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with quiet():
        sd.save_pretrained(tmp_path / "sd")
    # --controlnet takes the whole folder `hoigen train` writes (its controlnet/ subfolder is used)
    paired, info = load_pipeline(str(tmp_path / "sd"), controlnet=str(folder))
    assert info["kind"] == "pretrained"
    reference, _ = load_pipeline(str(folder))
    for (name, a), (_, b) in zip(
        paired.controlnet.state_dict().items(), reference.controlnet.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_missing_weights_give_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HoigenError) as error:
        load_pipeline("someone/sd-not-cached")
    message = str(error.value)
    assert "\n" not in message and "someone/sd-not-cached" in message
    assert "huggingface-cli download someone/sd-not-cached" in message
    with pytest.raises(HoigenError, match=r"no-controlnet: ControlNet folder not found; .*hoigen train"):
        load_pipeline(str(tmp_path / "sd-missing"), controlnet=str(tmp_path / "no-controlnet"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(HoigenError, match="broken: cannot load the ControlNet"):
        load_pipeline(str(tmp_path / "broken"), controlnet=str(tmp_path / "broken"))


def test_dtype_choices():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cuda") == torch.bfloat16
    with pytest.raises(HoigenError, match="auto"):
        resolve_dtype("float8", "cpu")


# --- speed paths must not change results ------------------------------------------------------------


def test_cached_condition_encoding_is_exact_and_runs_once(pipe):
    calls = []
    inner = pipe.controlnet.controlnet_cond_embedding
    handle = inner.register_forward_hook(lambda *args: calls.append(1))
    try:
        cached = generate(pipe, _conds(2), ["a", "b"], [4, 5], steps=3)
        assert len(calls) == 1  # three steps, one condition encoding
        with torch.no_grad():
            plain_calls = len(calls)
            # the same call without the cache: patch the context manager out
            import hoigen.diffusion.pipeline as pipeline_module

            original = pipeline_module.cached_condition_encoding
            pipeline_module.cached_condition_encoding = lambda net, blank=False: torch.no_grad()
            try:
                plain = generate(pipe, _conds(2), ["a", "b"], [4, 5], steps=3)
            finally:
                pipeline_module.cached_condition_encoding = original
        assert len(calls) - plain_calls == 3
    finally:
        handle.remove()
    assert _same(cached, plain)
    assert pipe.controlnet.controlnet_cond_embedding is inner  # restored
    with cached_condition_encoding(pipe.controlnet):
        pass


# --- schedulers and scales --------------------------------------------------------------------------


def test_schedulers_by_name(pipe):
    images = {}
    for name in SCHEDULER_NAMES:
        set_scheduler(pipe, name)
        images[name] = generate(pipe, _conds(1), ["a mug"], [7], steps=3)[0]
        assert _same([images[name]], generate(pipe, _conds(1), ["a mug"], [7], steps=3))
    set_scheduler(pipe, "ddim")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert _diff(images["ddim"], images["dpm++"]) > 0.0 and _diff(images["ddim"], images["unipc"]) > 0.0
    with pytest.raises(HoigenError, match="ddim, unipc, dpm"):
        set_scheduler(pipe, "euler")


def test_condition_scales(pipe):
    assert parse_condition_scales(None) == (1.0, 1.0, 1.0)
    assert parse_condition_scales("seg=0.5, skeleton=2") == (1.0, 0.5, 2.0)
    assert parse_condition_scales({"normal": 0}) == (0.0, 1.0, 1.0)
    for bad, match in (("depth=1", "unknown map 'depth'"), ("seg", "name=value"), ("seg=x", "not a number"),
                       ("seg=-1", ">= 0")):
        with pytest.raises(HoigenError, match=match):
            parse_condition_scales(bad)
    conds = _conds(1)
    scaled = scale_conditions(conds, (0.0, 1.0, 0.5))
    assert float(scaled[:, 0:3].abs().sum()) == 0.0
    assert torch.equal(scaled[:, 3:6], conds[:, 3:6]) and torch.allclose(scaled[:, 6:9], conds[:, 6:9] * 0.5)
    assert scale_conditions(conds, (1.0, 1.0, 1.0)) is conds
    base = generate(pipe, conds, ["a mug"], [7], steps=STEPS)[0]
    ones = generate(pipe, conds, ["a mug"], [7], steps=STEPS, condition_scales=(1.0, 1.0, 1.0))[0]
    no_normal = generate(pipe, conds, ["a mug"], [7], steps=STEPS, condition_scales=(0.0, 1.0, 1.0))[0]
    zeroed = conds.clone()
    zeroed[:, 0:3] = 0
    by_hand = generate(pipe, zeroed, ["a mug"], [7], steps=STEPS)[0]
    assert base.tobytes() == ones.tobytes() and no_normal.tobytes() == by_hand.tobytes()
    assert _diff(base, no_normal) > 0.0


def test_blank_background_zeroes_all_channels_off_the_hand_and_object():
    rng = np.random.default_rng(0)
    normal = rng.integers(1, 256, (16, 16, 3), dtype=np.uint8)  # faint normals everywhere
    seg = np.zeros((16, 16), np.uint8)
    seg[4:8, 4:8] = 1
    skeleton = np.zeros((16, 16, 3), np.uint8)
    skeleton[12, 2:14] = 255  # a bone stroke outside the masks is kept
    stacked = stack_conditions(normal, seg, skeleton, blank_background=True)
    background = (seg == 0) & (skeleton.sum(axis=2) == 0)
    assert float(stacked[:, torch.from_numpy(background)].abs().sum()) == 0.0
    assert torch.allclose(stacked[0:3, 5, 5] * 255, torch.from_numpy(normal[5, 5]).float())
    assert float(stacked[6:9, 12, 5].min()) == 1.0 and float(stacked[0:3, 12, 5].sum()) > 0
    plain = stack_conditions(normal, seg, skeleton)  # without the flag: the maps as they are
    assert torch.allclose(plain[0:3, 0, 0] * 255, torch.from_numpy(normal[0, 0]).float())


def test_blank_uncond_changes_guidance_only(pipe):
    conds = _conds(2, seed=4)
    plain = generate(pipe, conds, ["a mug", "a can"], [1, 2], steps=STEPS)
    blank = generate(pipe, conds, ["a mug", "a can"], [1, 2], steps=STEPS, blank_uncond=True)
    assert _same(blank, generate(pipe, conds, ["a mug", "a can"], [1, 2], steps=STEPS, blank_uncond=True))
    assert _diff(plain[0], blank[0]) > 0.0 and _diff(plain[1], blank[1]) > 0.0
    # without guidance there is no unconditional branch: nothing changes
    no_cfg = generate(pipe, conds, ["a mug", "a can"], [1, 2], steps=STEPS, guidance=1.0)
    no_cfg_blank = generate(pipe, conds, ["a mug", "a can"], [1, 2], steps=STEPS, guidance=1.0, blank_uncond=True)
    assert _same(no_cfg, no_cfg_blank)
    # the unconditional half is blanked, not the conditional one: blank conditions everywhere differ
    all_blank = generate(pipe, torch.zeros_like(conds), ["a mug", "a can"], [1, 2], steps=STEPS)
    assert _diff(all_blank[0], blank[0]) > 0.0


# --- video ------------------------------------------------------------------------------------------


def test_one_frame_video_equals_plain_synthesis(pipe):
    plain = generate(pipe, _conds(1), ["a mug"], [11], steps=STEPS)
    video = generate(pipe, _conds(1), ["a mug"], [11], steps=STEPS, video_anchor=0)
    assert _same(plain, video)


def test_video_frames_attend_to_the_anchor(pipe):
    conds = _conds(3, seed=2)
    prompts, seeds = ["a mug"] * 3, [5] * 3
    video = generate(pipe, conds, prompts, seeds, steps=STEPS, video_anchor=1)
    again = generate(pipe, conds, prompts, seeds, steps=STEPS, video_anchor=1)
    assert _same(video, again)
    # the anchor's own conditions change: the other frames change (their attention reads it) ...
    other = conds.clone()
    other[1] = _conds(1, seed=7)[0]
    moved = generate(pipe, other, prompts, seeds, steps=STEPS, video_anchor=1)
    assert _diff(video[0], moved[0]) > 0.05 and _diff(video[2], moved[2]) > 0.05
    # ... while in plain synthesis frame 0 does not depend on frame 1
    plain = generate(pipe, conds, prompts, seeds, steps=STEPS, per_sample=True)
    plain_moved = generate(pipe, other, prompts, seeds, steps=STEPS, per_sample=True)
    assert plain[0].tobytes() == plain_moved[0].tobytes()
    assert _diff(video[0], plain[0]) > 0.05  # cross-frame attention is really on
    # another anchor, other frames
    assert _diff(video[0], generate(pipe, conds, prompts, seeds, steps=STEPS, video_anchor=2)[0]) > 0.05
    # processors are restored afterwards
    assert not any(isinstance(p, AnchorFrameAttnProcessor) for p in pipe.unet.attn_processors.values())


def test_anchor_processor_matches_plain_attention_when_every_frame_is_the_anchor(pipe):
    """Attending to [own tokens, own tokens] equals self-attention (up to rounding)."""
    attn = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn1"))
    x = torch.randn(2, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    plain = AnchorFrameAttnProcessor(1, 0)(attn, x)
    video = AnchorFrameAttnProcessor(2, 0)
    doubled = video(attn, torch.cat([x[:1], x[:1]]))
    assert torch.allclose(doubled[0], plain[0], atol=1e-5)
    with pytest.raises(ValueError):
        AnchorFrameAttnProcessor(3, 0)(attn, x)
    with anchor_attention(pipe, 2, 1):
        assert isinstance(pipe.unet.attn_processors[next(iter(pipe.unet.attn_processors))], AnchorFrameAttnProcessor)


def test_anchor_index_and_trajectory_groups():
    assert [anchor_index(8, a) for a in ("middle", "first", "last", 3, "20")] == [4, 0, 7, 3, 7]
    assert anchor_index(1) == 0
    keys = ["mug-1_0000_002_00", "mug-1_0000_000_00", "mug-1_0000_001_01", "mug-1_0000_001_00", "can_0003_000_00"]
    assert trajectory_groups(keys) == [[1, 3, 0], [2], [4]]


def test_write_mp4(tmp_path):
    import cv2

    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(5)]
    path = write_mp4(tmp_path / "clips" / "a.mp4", frames, fps=5)
    capture = cv2.VideoCapture(str(path))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5 and int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 48
    capture.release()
    assert [p.name for p in path.parent.iterdir()] == ["a.mp4"]


# --- the stage ----------------------------------------------------------------------------------------


def _render_samples(frames: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    samples = []
    for view in (0, 1):
        for frame in range(frames):
            seg = np.zeros((SIZE, SIZE), np.uint8)
            seg[8 + frame : 20 + frame, 8:20] = 1
            seg[14:26, 16:28] = 2
            samples.append(
                {
                    "__key__": f"mug-1_0000_{frame:03d}_{view:02d}",
                    "normal.png": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) * (seg > 0)[..., None],
                    "seg.png": seg,
                    "skeleton.png": np.zeros((SIZE, SIZE, 3), np.uint8),
                    "ann.json": {"object": {"category": "mug"}, "trajectory": {"frame": frame, "frames": frames}},
                }
            )
    return samples


def _ctx(folder: Path, out: Path, **overrides) -> StageContext:
    from hoigen.diffusion.options import SynthOptions
    from hoigen.diffusion.stage import SynthInputs

    given = {"model": str(folder), "device": "cpu", "steps": STEPS, "size": SIZE, "negative_prompt": "blurry",
             "batch_size": 2, "fps": 4}  # fmt: skip
    options = SynthOptions(**{**given, **overrides})
    out.mkdir(parents=True, exist_ok=True)
    inputs = SynthInputs(("a hand holding a {object}, {background}",))
    return StageContext(stage="synthesize", seed=3, options=options, out_dir=out, inputs=inputs)


def test_stage_images_per_condition_and_reruns(folder, tmp_path, monkeypatch):
    from hoigen.diffusion import stage
    from hoigen.diffusion.stage import Feed, synth_stage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(stage, "FEED", Feed(writer=False))  # images as arrays (the writer thread encodes them)
    samples = _render_samples()
    ctx = _ctx(folder, tmp_path / "a", images_per_condition=2, batch_size=3)
    out = list(synth_stage(iter(samples), ctx))
    assert [s["__key__"] for s in out] == [s["__key__"] for s in samples]
    first = out[0]
    assert {"image.jpg", "image_1.jpg", "prompt.txt", "prompt_1.txt", "gen.json"} <= set(first)
    gen = first["gen.json"]
    assert gen["seed"] == derive_seed(3, "synthesize", first["__key__"])
    assert [i["image"] for i in gen["images"]] == ["image.jpg", "image_1.jpg"]
    assert gen["images"][1]["seed"] == derive_seed(3, "synthesize", first["__key__"], 1)
    assert _diff(first["image.jpg"], first["image_1.jpg"]) > 1.0
    json.dumps(gen)
    # image 0 equals a one-image run's, whatever the batch size (per-sample seeds)
    single = list(synth_stage(iter(_render_samples()), _ctx(folder, tmp_path / "b", batch_size=1)))
    for a, b in zip(out, single, strict=True):
        assert _diff(a["image.jpg"], b["image.jpg"]) < 0.05 and a["prompt.txt"] == b["prompt.txt"]
    ctx = _ctx(folder, tmp_path / "c", images_per_condition=2, batch_size=3)
    rerun = list(synth_stage(iter(_render_samples()), ctx))
    assert all(a["image_1.jpg"].tobytes() == b["image_1.jpg"].tobytes() for a, b in zip(out, rerun, strict=True))


def test_stage_video_writes_clips_and_frames(folder, tmp_path, monkeypatch):
    from hoigen.diffusion import stage
    from hoigen.diffusion.stage import Feed, synth_stage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(stage, "FEED", Feed(writer=False))  # images as arrays (the writer thread encodes them)
    out_dir = tmp_path / "v"
    out = list(synth_stage(iter(_render_samples()), _ctx(folder, out_dir, video=True)))
    assert len(out) == 6
    videos = out_dir / "videos"
    assert sorted(p.name for p in videos.iterdir()) == [
        "mug-1_0000_00", "mug-1_0000_00.mp4", "mug-1_0000_01", "mug-1_0000_01.mp4"
    ]
    assert sorted(p.name for p in (videos / "mug-1_0000_00").iterdir()) == ["000.jpg", "001.jpg", "002.jpg"]
    gen = out[0]["gen.json"]
    assert gen["video"]["anchor"] == "mug-1_0000_001_00" and gen["video"]["mp4"] == "videos/mug-1_0000_00.mp4"
    # one prompt and one seed per trajectory
    assert len({s["prompt.txt"] for s in out[:3]}) == 1 and len({s["gen.json"]["seed"] for s in out[:3]}) == 1
    again = list(synth_stage(iter(_render_samples()), _ctx(folder, tmp_path / "w", video=True)))
    assert all(a["image.jpg"].tobytes() == b["image.jpg"].tobytes() for a, b in zip(out, again, strict=True))
