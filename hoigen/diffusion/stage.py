"""The synthesize stage: render samples in, the same samples plus a painted image out.

Samples are batched ``batch_size`` at a time; each gets its own prompt (a template chosen and
filled from the sample key's seed) and its own diffusion seed derived from the run seed and its
key, so an image does not depend on batching, workers or ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

import torch

from hoigen.data.runner import StageContext
from hoigen.data.schema import Sample, derive_seed

BACKGROUNDS = (
    "on a wooden kitchen table",
    "in a bright living room",
    "on an office desk",
    "in front of a white wall",
    "outdoors in a garden",
    "on a marble countertop",
)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@lru_cache(maxsize=1)
def _pipeline(model: str, controlnet: str | None, device: str) -> tuple[Any, dict]:
    from hoigen.diffusion.pipeline import load_pipeline

    return load_pipeline(model, controlnet, device=device)


def sample_prompt(templates: list[str], category: str, rng) -> str:
    from hoigen.diffusion.prompts import fill_prompt

    template = templates[int(rng.integers(len(templates)))]
    return fill_prompt(template, object=category, background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])


def synth_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """Add ``image.jpg``, ``prompt.txt`` and ``gen.json`` to every render sample."""
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == ctx.config["batch_size"]:
            yield from _paint(batch, ctx)
            batch = []
    if batch:
        yield from _paint(batch, ctx)


def _paint(batch: list[Sample], ctx: StageContext) -> list[Sample]:
    from hoigen.diffusion.conditions import stack_conditions
    from hoigen.diffusion.pipeline import generate

    cfg = ctx.config
    pipe, info = _pipeline(cfg["model"], cfg.get("controlnet"), resolve_device(cfg["device"]))
    size = int(cfg["size"])
    conds = torch.stack([stack_conditions(s["normal.png"], s["seg.png"], s["skeleton.png"], size) for s in batch])
    prompts = [
        sample_prompt(cfg["prompt_templates"], s["ann.json"]["object"]["category"], ctx.rng(s["__key__"]))
        for s in batch
    ]
    seeds = [derive_seed(ctx.seed, "synthesize", s["__key__"]) for s in batch]
    images = generate(
        pipe,
        conds,
        prompts,
        seeds,
        steps=cfg["steps"],
        guidance=cfg["guidance"],
        negative_prompt=cfg.get("negative_prompt"),
    )
    out = []
    for sample, prompt, seed, image in zip(batch, prompts, seeds, images, strict=True):
        gen = {
            **info,
            "seed": seed,
            "steps": cfg["steps"],
            "guidance": cfg["guidance"],
            "size": size,
            "negative_prompt": cfg.get("negative_prompt"),
            "conditions": ["normal", "seg", "skeleton"],
        }
        out.append(
            {
                **{k: v for k, v in sample.items() if k != "__shard__"},
                "image.jpg": image,
                "prompt.txt": prompt,
                "gen.json": gen,
            }
        )
    return out
