"""Synthesis benchmarks: one fused 9-channel ControlNet against diffusers' MultiControlNet of three.

HOIDiffusion's original code runs three condition networks (skeleton, normal, segmentation) and
sums their features; hoigen stacks the three maps into one 9-channel ControlNet input. Per step the
fused model costs one UNet + one ControlNet forward, the MultiControlNet baseline one UNet + three
ControlNet forwards. ``fused_vs_multi`` measures images per second of both in one run (interleaved)
at the same steps and size, and ``step_bound`` compares the fused pipeline's time per step with the
bound of one bare UNet + ControlNet forward at the same batch (with classifier-free guidance the
networks see twice the batch).

The scale comes from ``HOIGEN_BENCH_SYNTH``: ``tiny`` (default: the tiny stand-in, 64 px, 10 steps,
float32 on CPU) or ``sd15`` (Stable Diffusion 1.5-sized UNet / VAE / text encoder and SD-sized
ControlNets, random weights built from configs, 512 px, 20 steps, float16 on CUDA).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hoigen.diffusion.backend import (
    AutoencoderKL,
    CLIPTextConfig,
    CLIPTextModel,
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
    quiet,
)
from hoigen.diffusion.conditions import CONDITIONING_CHANNELS


@dataclass(frozen=True)
class BenchScale:
    name: str
    size: int
    steps: int
    batch: int
    device: str
    dtype: torch.dtype
    repeats: int


def bench_scale() -> BenchScale:
    """The benchmark's scale from ``HOIGEN_BENCH_SYNTH`` (tiny | sd15)."""
    kind = os.environ.get("HOIGEN_BENCH_SYNTH", "tiny").strip().lower()
    if kind == "sd15":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        return BenchScale("sd15", 512, 20, 4, device, dtype, 3)
    return BenchScale("tiny", 64, 10, 4, "cpu", torch.float32, 3)


def _sd15_pipeline(seed: int = 0) -> StableDiffusionControlNetPipeline:
    """Random-weight Stable Diffusion 1.5-sized pipeline with a 9-channel ControlNet (architecture only)."""
    from hoigen.diffusion.tiny import build_tiny_pipeline, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=CONDITIONING_CHANNELS)
    tiny = build_tiny_pipeline(seed)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=tiny.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pair(scale: BenchScale) -> tuple[StableDiffusionControlNetPipeline, StableDiffusionControlNetPipeline]:
    """(fused pipeline with one 9-channel ControlNet, the same pipeline with a MultiControlNet of three 3-channel)."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from hoigen.diffusion.pipeline import tune_pipeline
    from hoigen.diffusion.tiny import CONDITION_EMBEDDING_CHANNELS, build_tiny_pipeline

    with quiet():
        fused = _sd15_pipeline() if scale.name == "sd15" else build_tiny_pipeline(0)
        embedding = CONDITION_EMBEDDING_CHANNELS if scale.name == "tiny" else (16, 32, 96, 256)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            nets = [
                ControlNetModel.from_unet(
                    fused.unet, conditioning_channels=3, conditioning_embedding_out_channels=embedding
                )
                for _ in range(3)
            ]
        multi = StableDiffusionControlNetPipeline(
            **{k: v for k, v in fused.components.items() if k != "controlnet"},
            controlnet=MultiControlNetModel(nets),
        )
        multi.set_progress_bar_config(disable=True)
        for pipe in (fused, multi):
            pipe.to(device=scale.device, dtype=scale.dtype)
            for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.controlnet):
                module.eval()
        tune_pipeline(fused)
        if scale.device == "cuda":
            for module in (multi.unet, multi.vae, *nets):
                module.to(memory_format=torch.channels_last)
    return fused, multi


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(scale: BenchScale) -> tuple[torch.Tensor, list[str], list[int]]:
    g = torch.Generator().manual_seed(0)
    conds = torch.rand(scale.batch, CONDITIONING_CHANNELS, scale.size, scale.size, generator=g)
    return conds, ["a photo of a hand grasping a mug, on a wooden table"] * scale.batch, list(range(scale.batch))


def runners(scale: BenchScale, fused: Any, multi: Any) -> tuple[Any, Any]:
    """Callables painting one batch with each pipeline (same prompts, seeds, steps, guidance, size)."""
    from hoigen.diffusion.pipeline import generate

    conds, prompts, seeds = _inputs(scale)

    def run_fused() -> None:
        generate(fused, conds, prompts, seeds, steps=scale.steps, guidance=7.5)
        _sync(scale.device)

    run_multi = _three_map_runner(scale, multi, "controlnet_conditioning_scale")
    return run_fused, run_multi


def step_bound_runner(scale: BenchScale, fused: Any, cached: bool = False) -> Any:
    """One denoising step's networks alone: one ControlNet + one UNet forward at the CFG batch (2 x batch).

    ``cached``: the ControlNet's condition encoder runs once per call, not per step, as in the pipeline
    (``hoigen.diffusion.pipeline.cached_condition_encoding``): the tighter bound."""
    from contextlib import nullcontext

    from hoigen.diffusion.pipeline import cached_condition_encoding

    batch = 2 * scale.batch
    latent = scale.size // fused.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, latent, latent, generator=g).to(scale.device, scale.dtype)
    text = torch.randn(batch, 77, fused.unet.config.cross_attention_dim, generator=g).to(scale.device, scale.dtype)
    conds = torch.rand(batch, CONDITIONING_CHANNELS, scale.size, scale.size, generator=g).to(scale.device, scale.dtype)
    timestep = torch.tensor(500, device=scale.device)

    def run_steps() -> None:
        with torch.inference_mode(), cached_condition_encoding(fused.controlnet) if cached else nullcontext():
            for _ in range(scale.steps):
                down, mid = fused.controlnet(latents, timestep, text, controlnet_cond=conds, return_dict=False)
                fused.unet(
                    latents, timestep, text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False,
                )
        _sync(scale.device)

    return run_steps


def warm(*fns: Any) -> None:
    for fn in fns:
        fn()


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- HOIDiffusion's layout: three T2I-Adapters (MultiAdapter) beside the fused and MultiControlNet pipelines ----


def build_multi_adapter(scale: BenchScale, fused: StableDiffusionControlNetPipeline) -> Any:
    """The fused pipeline's base with a MultiAdapter of three full T2I-Adapters (HOIDiffusion's CoAdapter)."""
    from diffusers import MultiAdapter, StableDiffusionAdapterPipeline, T2IAdapter

    channels = list(fused.unet.config.block_out_channels)
    with quiet():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            adapters = [
                T2IAdapter(in_channels=3, channels=channels, num_res_blocks=2, downscale_factor=8,
                           adapter_type="full_adapter")
                for _ in range(3)
            ]
        base = {k: v for k, v in fused.components.items() if k not in ("controlnet", "image_encoder")}
        pipe = StableDiffusionAdapterPipeline(**base, adapter=MultiAdapter(adapters), requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device=scale.device, dtype=scale.dtype)
        pipe.adapter.eval()
        if scale.device == "cuda":
            pipe.adapter.to(memory_format=torch.channels_last)
    return pipe


def adapter_runner(scale: BenchScale, pipe: Any) -> Any:
    """A callable painting one batch with the MultiAdapter pipeline (same prompts, seeds, steps, size)."""
    return _three_map_runner(scale, pipe, "adapter_conditioning_scale")


def _three_map_runner(scale: BenchScale, pipe: Any, scale_arg: str) -> Any:
    """A callable painting one batch with a pipeline fed the three condition maps apart (MultiControlNet or
    MultiAdapter; ``scale_arg`` names its per-model weight argument), on :func:`_inputs`."""
    conds, prompts, seeds = _inputs(scale)
    maps = [conds[:, 3 * i : 3 * i + 3].to(scale.device, scale.dtype) for i in range(3)]

    def run() -> None:
        with torch.inference_mode():
            pipe(
                prompt=prompts,
                image=maps,
                height=scale.size,
                width=scale.size,
                num_inference_steps=scale.steps,
                guidance_scale=7.5,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
                output_type="np",
                **{scale_arg: [1.0, 1.0, 1.0]},
            )
        _sync(scale.device)

    return run


def adapter_rows(
    scale: BenchScale, fused: Any, run_fused: Any, run_multi: Any, repeats: int | None = None
) -> list[tuple[str, float, float]]:
    """Rows (name, baseline, candidate s/image): MultiAdapter x3 vs fused; MultiControlNet x3 vs MultiAdapter x3."""
    import statistics

    run_adapters = adapter_runner(scale, build_multi_adapter(scale, fused))
    warm(run_adapters)
    times: dict[str, list[float]] = {"adapters": [], "fused": [], "multi": []}
    for _ in range(repeats or scale.repeats):  # interleaved, so machine noise hits all three alike
        for name, fn in (("adapters", run_adapters), ("fused", run_fused), ("multi", run_multi)):
            times[name].append(timed(fn))
    per = scale.batch
    med = {k: statistics.median(v) / per for k, v in times.items()}
    where = f"{scale.name} {scale.size}px {scale.steps} steps batch {per} {str(scale.dtype)[6:]} {scale.device}"
    return [
        (f"synth {where}: s/image, MultiAdapter x3 (HOIDiffusion's layout) vs fused 9-ch HOI ControlNet",
         med["adapters"], med["fused"]),
        (f"synth {where}: s/image, MultiControlNet x3 vs MultiAdapter x3", med["multi"], med["adapters"]),
    ]


# --- the synthesize loop: keeping the device fed (issue 22) ---------------------------------------------

LOOP_BATCHES = 3  # batches per timed run of the stage loop


def _loop_shard(scale: BenchScale, count: int) -> Path:
    """A render-like input shard of ``count`` samples at the scale's size (random maps, read back like a
    real input: tar members decoded per sample)."""
    import json
    import tempfile

    import numpy as np

    from hoigen.data.shards import ShardWriter

    folder = Path(tempfile.mkdtemp(prefix="hoigen-bench-synth-"))
    rng = np.random.default_rng(0)
    size = scale.size
    with ShardWriter(folder / "input.tar") as writer:
        for i in range(count):
            seg = np.zeros((size, size), np.uint8)
            seg[size // 4 : size // 2, size // 4 : size // 2] = 1
            seg[size // 3 : 3 * size // 4, size // 3 : 3 * size // 4] = 2
            writer.write({
                "__key__": f"mug-1_{i:04d}_000_00",
                "normal.png": rng.integers(0, 256, (size, size, 3), dtype=np.uint8) * (seg > 0)[..., None],
                "seg.png": seg,
                "skeleton.png": np.zeros((size, size, 3), np.uint8),
                "ann.json": json.loads(json.dumps({"object": {"id": "mug-1", "category": "mug"}})),
            })
    return folder


def loop_runner(scale: BenchScale, pipe: Any, feed: Any, batches: int = LOOP_BATCHES) -> Any:
    """A callable running the synthesize stage's loop over ``batches`` batches read from a shard and
    written to a shard (the real reading, condition building, painting, encoding and tar writing), with
    the loop settings ``feed`` (``hoigen.diffusion.stage.Feed``) and ``pipe`` standing in for the model."""
    from unittest import mock

    from hoigen.data.runner import StageContext
    from hoigen.data.shards import ShardWriter, read_shard
    from hoigen.diffusion import stage
    from hoigen.diffusion.options import SynthOptions

    folder = _loop_shard(scale, scale.batch * batches)
    controls = [{"kind": "hoi", "model": "bench", "family": "controlnet"}]
    info = {"kind": "bench", "model": scale.name, "controls": controls}
    options = SynthOptions(steps=scale.steps, size=scale.size, batch_size=scale.batch, device=scale.device,
                           negative_prompt="blurry, low quality").resolved()  # fmt: skip
    inputs = stage.SynthInputs(("a photo of a hand holding a {object}, {background}",))
    ctx = StageContext(stage="synthesize", seed=0, options=options, out_dir=folder, inputs=inputs)

    def run() -> None:
        with mock.patch.object(stage, "FEED", feed), mock.patch.object(stage, "pipeline_for", lambda _: (pipe, info)):
            with ShardWriter(folder / "shard-000000.tar") as writer:
                for sample in stage.synth_stage(read_shard(folder / "input.tar"), ctx):
                    writer.write(sample)
        _sync(scale.device)

    return run


def loop_rows(scale: BenchScale, fused: Any, repeats: int | None = None) -> list[tuple]:
    """Rows of the stage loop, each timed side by side (medians):

    ``synth-bound``: at batch 8, steps x (one ControlNet + one UNet forward at the guidance batch, the
    condition encoded once as the pipeline does) per image vs the new loop's wall time per image (read,
    paint, encode, write); ratio = share of the bound.
    ``synth-loop``: CPU seconds per image (all threads) of the loop before issue 22 (``Feed.inline``) vs the
    new loop on the same model, batch and images (the bytes written are identical).
    """
    import dataclasses
    import statistics

    from hoigen.diffusion.stage import Feed

    scale8 = dataclasses.replace(scale, batch=8)
    bound = step_bound_runner(scale8, fused, cached=True)
    new, old = loop_runner(scale8, fused, Feed()), loop_runner(scale8, fused, Feed.inline())
    warm(bound, new, old)
    images = scale8.batch * LOOP_BATCHES
    wall: dict[str, list[float]] = {"bound": [], "new": [], "old": []}
    cpu: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(repeats or scale.repeats):  # interleaved
        wall["bound"].append(timed(bound) / scale8.batch)
        for name, fn in (("old", old), ("new", new)):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append((time.perf_counter() - t0) / images)
            cpu[name].append((time.process_time() - c0) / images)
    w = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    where = f"{scale.name} {scale.size}px {scale.steps} steps batch 8 {str(scale.dtype)[6:]} {scale.device}"
    return [
        (f"synth-bound {where}: s/image, bound (steps x 1 UNet + 1 ControlNet, condition encoded once) vs the "
         f"loop (read, paint, encode, write; old loop {w['bound'] / w['old']:.2f} of the bound); ratio = share, "
         "goal >= 0.90 on GPU",
         w["bound"], w["new"], "synth-bound"),
        (f"synth-loop {where}: CPU s/image, loop before issue 22 vs now "
         f"(wall {w['old']:.3f} vs {w['new']:.3f} s/image)",
         c["old"], c["new"], "synth-loop"),
    ]


if __name__ == "__main__":  # python -m benchmarks.diffusion: the three layouts side by side
    _scale = bench_scale()
    if _scale.device == "cpu":
        torch.set_num_threads(1)
    _fused, _multi = build_pair(_scale)
    _run_fused, _run_multi = runners(_scale, _fused, _multi)
    warm(_run_fused, _run_multi)
    for _name, _base, _cand, *_ in adapter_rows(_scale, _fused, _run_fused, _run_multi) + loop_rows(_scale, _fused):
        print(f"{_name}: {_base:.4f} vs {_cand:.4f} ({_base / _cand:.2f}x)")
