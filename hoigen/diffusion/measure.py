"""Do painted images follow their conditions? The learning measure of the tiny-trained stand-in.

A falling training loss does not show that a model uses its conditions (an unconditioned model lowers
it too). This paints render samples twice -- with the ControlNet, and with its output switched off
(``control_scale`` 0, the CLI's ``--control-scale 0``), same prompts and seeds -- and compares each
painted image with the render:

- foreground IoU: a painted pixel is foreground when one of its channels differs from the render's
  background colour (the median ``shade.png`` colour where ``seg.png`` is 0; black for hoigen
  renders) by more than ``FOREGROUND_LEVELS`` of 255; the IoU is taken against ``seg.png``'s hand +
  object mask (seg != 0) at the painted size, per image, then averaged;
- error: the mean absolute difference to ``shade.png`` at the painted size, in 0..255 levels.

``condition_agreement`` is the one function; ``tests/test_tiny_trained.py`` asserts on it and
``python -m hoigen.diffusion.measure RENDER_DIR`` prints it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

FOREGROUND_LEVELS = 32


def background_colour(shade: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """The render's background colour: the per-channel median of ``shade`` where ``seg`` is 0 (black if none)."""
    pixels = np.asarray(shade)[np.asarray(seg) == 0]
    return np.median(pixels, axis=0) if len(pixels) else np.zeros(3)


def foreground(image: np.ndarray, background: np.ndarray, levels: int = FOREGROUND_LEVELS) -> np.ndarray:
    """(H, W) bool: pixels with a channel more than ``levels`` away from ``background``."""
    return np.abs(image.astype(np.float32) - np.asarray(background, np.float32)).max(axis=-1) > levels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def condition_agreement(
    pipe: Any,
    samples: list[dict[str, Any]],
    size: int = 64,
    steps: int = 4,
    guidance: float = 7.5,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Paint ``samples`` (render samples: shade/seg/normal/skeleton .png and ann.json) with and without
    the ControlNet and measure both against the render; returns means and per-sample values.

    Prompts are drawn as ``hoigen synthesize`` draws them (default templates, seeded by key), seeds
    from (``seed``, key); ``steps``/``guidance``: the sampler settings (the demo's by default).
    """
    from hoigen.data.schema import derive_seed
    from hoigen.diffusion.conditions import stack_conditions
    from hoigen.diffusion.pipeline import generate
    from hoigen.diffusion.prompts import DEFAULT_PROMPTS
    from hoigen.diffusion.stage import sample_prompt

    if not samples:
        raise ValueError("condition_agreement needs at least one sample")
    rows: list[dict[str, Any]] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        conds = torch.stack(
            [
                stack_conditions(s["normal.png"], s["seg.png"], s["skeleton.png"], size, blank_background=True)
                for s in chunk
            ]
        )
        keys = [s["__key__"] for s in chunk]
        prompts = [
            sample_prompt(
                list(DEFAULT_PROMPTS),
                s,
                np.random.default_rng(derive_seed(seed, "measure prompt", s["__key__"])),
            )
            for s in chunk
        ]
        seeds = [derive_seed(seed, "measure", key) for key in keys]
        painted = {
            scale: generate(pipe, conds, prompts, seeds, steps=steps, guidance=guidance, control_scale=scale)
            for scale in (1.0, 0.0)
        }
        for i, s in enumerate(chunk):
            bg = background_colour(s["shade.png"], s["seg.png"])
            mask = cv2.resize(s["seg.png"].astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) != 0
            shade = cv2.resize(s["shade.png"], (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
            row: dict[str, Any] = {"key": keys[i]}
            for scale, name in ((1.0, ""), (0.0, "_blind")):
                image = painted[scale][i]
                row["iou" + name] = iou(foreground(image, bg), mask)
                row["error" + name] = float(np.abs(image.astype(np.float32) - shade).mean())
            rows.append(row)
    mean = {name: float(np.mean([r[name] for r in rows])) for name in ("iou", "iou_blind", "error", "error_blind")}
    return {
        "samples": len(rows),
        **mean,
        "iou_gain": mean["iou"] - mean["iou_blind"],
        "foreground_levels": FOREGROUND_LEVELS,
        "size": size,
        "steps": steps,
        "guidance": guidance,
        "per_sample": rows,
    }


def render_samples(render_dir: Path | str, limit: int | None = None) -> list[dict[str, Any]]:
    """The samples of a render folder's shards (the fields the measure needs), in shard order."""
    from hoigen.data.shards import list_shards, read_shard

    fields = ("shade.png", "seg.png", "normal.png", "skeleton.png", "ann.json")
    out: list[dict[str, Any]] = []
    for shard in list_shards(Path(render_dir)):
        for sample in read_shard(shard, fields=fields):
            out.append(sample)
            if limit is not None and len(out) >= limit:
                return out
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from hoigen.diffusion.pipeline import load_pipeline
    from hoigen.errors import HoigenError

    parser = argparse.ArgumentParser(prog="python -m hoigen.diffusion.measure", description=__doc__.split("\n")[0])
    parser.add_argument("render_dir", type=Path)
    parser.add_argument("--model", default="tiny-trained")
    parser.add_argument("--limit", type=int, default=None, help="measure the first N samples only")
    parser.add_argument("--every", type=int, default=1, help="take every N-th sample")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        samples = render_samples(args.render_dir)[:: args.every][: args.limit]
        if not samples:
            raise HoigenError(f"{args.render_dir}: no render samples to measure")
        pipe, _ = load_pipeline(args.model, dtype="float32")
    except HoigenError as error:
        print(f"error: {error}")
        return 1
    result = condition_agreement(pipe, samples, steps=args.steps, guidance=args.guidance)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['samples']} samples of {args.render_dir}, {args.model}, {args.steps} steps, "
              f"guidance {args.guidance}")
        print("| | foreground IoU | error to shade.png (levels) |")
        print("| --- | --- | --- |")
        print(f"| with conditions | {result['iou']:.3f} | {result['error']:.1f} |")
        print(f"| --control-scale 0 | {result['iou_blind']:.3f} | {result['error_blind']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
