"""Building the ``tiny-trained`` stand-in from render shards: VAE first, then ControlNet + UNet.

``make tiny-trained`` renders ``recipes/tiny-trained.yaml`` (fixed seed) and runs

    python -m hoigen.diffusion.tiny_build out/tiny-trained/render --out hoigen/diffusion/assets/tiny-trained

which (1) builds the ``TINY_TRAINED`` architecture with seeded weights, (2) trains its autoencoder on
``shade.png`` and the condition maps (``tiny_vae_train``), (3) trains the ControlNet and the whole
UNet on (conditions -> shade.png) with the project's diffusion trainer (``train.ControlNetTrainer``,
``TrainOptions(train_unet=True)``; VAE and text encoder frozen) and (4) writes the asset folder:
``weights.safetensors`` (every module, float16) and ``tiny_trained.json`` (what it is, how it was made).

Everything is seeded and single-process, so on one machine (same thread count, same library
versions, ``MKL_CBWR=COMPATIBLE``, which this module sets when run as a program) the asset is the same
bytes every time; timings go to ``WORK/build_log.json``, not into the asset. The settings below
(``BuildSettings``) are the recipe: change them here, rebuild, and re-measure
(``python -m hoigen.diffusion.measure``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# MKL's strict reproducibility mode, set before torch loads MKL (`python -m hoigen.diffusion.tiny_build`
# and `make tiny-trained` do): without it, MKL's results depend on state left by earlier work in the
# process (measured: a build after painting images differed from one in a fresh process).
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hoigen.diffusion.tiny import (
    TINY_TRAINED,
    TINY_TRAINED_NAME,
    TINY_TRAINED_RECORD,
    TINY_TRAINED_WEIGHTS,
    build_tiny_pipeline,
    tiny_modules,
)
from hoigen.diffusion.tiny_vae_train import VaeTrainSettings
from hoigen.errors import HoigenError

KIND_NOTE = (
    "tiny stand-in trained offline on hoigen renders (plain shaded images as targets); "
    "not Stable Diffusion, never a photo model"
)


@dataclass(frozen=True)
class BuildSettings:
    """The whole recipe after the render data: sizes, steps, learning rates, threads."""

    seed: int = 0
    size: int = 64
    threads: int = 1  # one thread: on a busy shared CPU more threads spin-wait (and change rounding)
    vae: VaeTrainSettings = field(default_factory=lambda: VaeTrainSettings(steps=300, batch_size=8, lr=2e-3))
    steps: int = 700  # ControlNet + UNet steps
    batch_size: int = 8
    lr: float = 1e-3
    lr_warmup_steps: int = 50
    lr_scheduler: str = "cosine"
    text_dropout: float = 0.1


def synthesis_caption(image: Any, ann: dict[str, Any]) -> str:
    """A training caption drawn like ``hoigen synthesize`` draws prompts (templates x backgrounds), seeded by key.

    The renders have no captions; training on prompts of the kind synthesis feeds keeps the model's
    text branch on familiar ground there (and classifier-free guidance from amplifying strangeness).
    """
    from hoigen.data.schema import derive_seed
    from hoigen.diffusion.prompts import DEFAULT_PROMPTS
    from hoigen.diffusion.stage import sample_prompt

    rng = np.random.default_rng(derive_seed(0, "tiny-trained caption", ann["key"]))
    return sample_prompt(list(DEFAULT_PROMPTS), {"ann.json": ann, "__key__": ann["key"]}, rng)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``safetensors.torch.save`` with the metadata in sorted order: safetensors writes its metadata map in
    a per-process hash order, which made two builds' headers differ (same tensors, same length)."""
    import struct

    from safetensors.torch import save

    data = save(state, metadata=metadata)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > length:
        raise HoigenError("safetensors header grew when its metadata was sorted")  # cannot happen: same items
    return data[:8] + text.ljust(length, b" ") + data[8 + length :]


def build_tiny_trained(
    render_dir: Path | str,
    out: Path | str,
    work: Path | str,
    settings: BuildSettings | None = None,
    quiet: bool = False,
    recipe: str | None = None,
) -> dict[str, Any]:
    """Train the tiny-trained pipeline on ``render_dir``'s shards and write the asset folder ``out``.

    ``recipe``: the recipe that rendered the data, for the record."""
    from hoigen.data.contract import read_run_json
    from hoigen.data.shards import list_shards
    from hoigen.diffusion.options import TrainOptions
    from hoigen.diffusion.tiny_vae_train import latent_scale, reconstruction_error, train_vae, vae_training_images
    from hoigen.diffusion.train import ControlNetTrainer
    from hoigen.diffusion.train_data import ExampleBatches, shard_examples

    settings = settings or BuildSettings()
    render_dir, out, work = Path(render_dir), Path(out), Path(work)
    shards = list_shards(render_dir)
    if not shards:
        raise HoigenError(f"{render_dir}: no render shards; run `hoigen run recipes/tiny-trained.yaml` first")
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    data = shard_examples(shards, settings.size, hook=synthesis_caption)
    examples = [data[i] for i in range(len(data))]  # a few hundred 64 px samples: decode once
    if any(e["target"] != "shade.png" for e in examples):
        raise HoigenError(f"{render_dir}: tiny-trained trains on render shards (shade.png targets) only")

    pipe = build_tiny_pipeline(seed=settings.seed, arch=TINY_TRAINED)
    targets, maps = vae_training_images(examples)

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    say(f"tiny-trained: {len(examples)} samples from {len(shards)} shards; training the VAE")
    vae_stats = train_vae(pipe.vae, targets, maps, settings.vae)
    scale = latent_scale(pipe.vae, targets)
    pipe.vae.register_to_config(scaling_factor=scale)
    vae_error = reconstruction_error(pipe.vae, targets)
    say(
        f"VAE: L1 {vae_stats['first_loss']:.4f} -> {vae_stats['last_loss']:.4f} in {vae_stats['seconds']:.0f} s; "
        f"shade reconstruction error {vae_error:.2f} levels; latent scale {scale:.4f}"
    )

    # Every setting the computation depends on, explicitly (the shipped weights were made with exactly
    # these; TrainOptions' defaults may move): no background buffer, no EMA, float32, no checkpoints.
    options = TrainOptions(
        model=TINY_TRAINED_NAME,
        steps=settings.steps,
        lr=settings.lr,
        batch_size=settings.batch_size,
        size=settings.size,
        text_dropout=settings.text_dropout,
        train_unet=True,
        train_unet_attention=False,
        gradient_checkpointing=False,
        mixed_precision="no",
        use_8bit_adam=False,
        ema_decay=0.0,
        lr_scheduler=settings.lr_scheduler,
        lr_warmup_steps=settings.lr_warmup_steps,
        max_grad_norm=1.0,
        checkpoint_every=0,
        resume="never",
        validate_every=0,
        threads=settings.threads,
    )
    base = {"model": TINY_TRAINED_NAME, "kind": "tiny-trained-build", "vae": "trained by tiny_vae_train"}
    trainer = ControlNetTrainer(pipe, options, work / "model", seed=settings.seed, quiet=quiet, base=base)
    diffusion = trainer.train(ExampleBatches(examples, settings.batch_size, settings.seed, "data"))
    say(
        f"ControlNet + UNet: loss {diffusion['first_loss']:.4f} -> {diffusion['last_loss']:.4f} "
        f"(mean of the last 50 steps {sum(diffusion['losses'][-50:]) / len(diffusion['losses'][-50:]):.4f}) "
        f"in {diffusion['seconds']:.0f} s"
    )

    out.mkdir(parents=True, exist_ok=True)
    state = {
        f"{name}.{key}": value.detach().to(torch.float16).contiguous()
        for name, module in tiny_modules(pipe).items()
        for key, value in module.state_dict().items()
    }
    weights = out / TINY_TRAINED_WEIGHTS
    weights.write_bytes(_safetensors_bytes(state, {"format": "pt", "model": TINY_TRAINED_NAME}))
    import diffusers

    record = {
        "model": TINY_TRAINED_NAME,
        "kind": TINY_TRAINED_NAME,
        "note": KIND_NOTE,
        "arch": asdict(TINY_TRAINED),
        "seed": settings.seed,
        "size": settings.size,
        "vae_scaling_factor": scale,
        "vae_reconstruction_error": round(vae_error, 4),
        "settings": asdict(settings),
        "data": {
            "recipe": recipe,
            "render_seed": read_run_json(render_dir).get("seed"),
            "shards": [p.name for p in shards],
            "shards_sha256": [_sha256(p) for p in shards],
            "samples": len(examples),
            "captions": "synthesis-style prompts (tiny_build.synthesis_caption)",
            "categories": sorted({e["key"].split("-", 1)[0] for e in examples}),
        },
        "losses": {
            "vae_first": vae_stats["first_loss"],
            "vae_last": vae_stats["last_loss"],
            "diffusion_first": diffusion["first_loss"],
            "diffusion_last50_mean": sum(diffusion["losses"][-50:]) / len(diffusion["losses"][-50:]),
        },
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in tiny_modules(pipe).items()},
        "storage": "float16",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    (out / TINY_TRAINED_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    seconds = time.perf_counter() - started
    log = {
        "seconds": round(seconds, 1),
        "vae_seconds": vae_stats["seconds"],
        "diffusion_seconds": diffusion["seconds"],
        "threads": settings.threads,
        "weights_sha256": _sha256(weights),
        "weights_bytes": weights.stat().st_size,
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "build_log.json").write_text(json.dumps({**log, "vae_losses": vae_stats["losses"]}, indent=2) + "\n")
    say(f"wrote {out} ({log['weights_bytes'] / 1e6:.1f} MB, sha256 {log['weights_sha256'][:16]}) in {seconds:.0f} s")
    return {**record, **log}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from hoigen.diffusion.tiny import TINY_TRAINED_DIR

    parser = argparse.ArgumentParser(prog="python -m hoigen.diffusion.tiny_build", description=__doc__.split("\n")[0])
    parser.add_argument("render_dir", type=Path, help="render shards (hoigen run recipes/tiny-trained.yaml)")
    parser.add_argument("--out", type=Path, default=TINY_TRAINED_DIR, help="asset folder [default: the package's]")
    parser.add_argument("--work", type=Path, default=Path("out/tiny-trained/work"), help="trainer output and logs")
    parser.add_argument("--threads", type=int, default=BuildSettings.threads)
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--steps", type=int, default=BuildSettings.steps)
    parser.add_argument("--recipe", default="recipes/tiny-trained.yaml", help="what rendered the data (recorded)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    default = BuildSettings()
    vae = default.vae
    if args.vae_steps is not None:
        vae = VaeTrainSettings(**{**asdict(default.vae), "steps": args.vae_steps})
    settings = BuildSettings(threads=args.threads, vae=vae, steps=args.steps)
    try:
        build_tiny_trained(args.render_dir, args.out, args.work, settings, args.quiet, args.recipe)
    except HoigenError as error:
        print(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
