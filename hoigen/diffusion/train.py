"""Fine-tuning the ControlNet on hand-object images, with HOIDiffusion's background regularisation.

The objective is the standard latent-diffusion one: encode the target image with the VAE, add noise
at a random timestep, and regress the noise (or the velocity, for v-prediction schedulers) from the
UNet, whose blocks receive the ControlNet's residuals computed from the 9-channel conditions. Only
the ControlNet learns; VAE, text encoder and UNet stay frozen.

Two regularisers from the paper:

- text dropout: each prompt is replaced by "" with probability ``text_dropout`` (classifier-free
  guidance needs the unconditional branch);
- background regularisation (paper eq. 3): every ``bg_every`` steps a batch from the background
  buffer (scenery images, blank = all-zero conditions, their own captions) adds
  ``bg_weight * L_bg`` to the loss, so the model keeps painting diverse backgrounds from text.

All randomness (noise, timesteps, VAE sampling, dropout) comes from generators seeded with ``seed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hoigen.diffusion.backend import DDPMScheduler, StableDiffusionControlNetPipeline, quiet, randn_tensor
from hoigen.errors import HoigenError

TRAIN_RECORD = "hoigen_train.json"


class _Batches:
    """Next batch from an iterable; re-iterates a re-iterable (a list) when it runs out."""

    def __init__(self, source: Iterable[dict[str, Any]], name: str) -> None:
        self.source = source
        self.name = name
        self.iterator: Iterator[dict[str, Any]] = iter(source)
        self.one_shot = self.iterator is source

    def next(self) -> dict[str, Any] | None:
        """The next batch, or None when a one-shot iterator is exhausted."""
        try:
            return next(self.iterator)
        except StopIteration:
            if self.one_shot:
                return None
        self.iterator = iter(self.source)
        try:
            return next(self.iterator)
        except StopIteration:
            raise HoigenError(f"{self.name}: no training batches; give at least one sample") from None


def _check_batch(batch: dict[str, Any], name: str, need_conditions: bool) -> None:
    for key in ("image", "prompt") + (("conditions",) if need_conditions else ()):
        if key not in batch:
            raise ValueError(f"{name} batch lacks {key!r}; batches hold image, conditions and prompt")
    image = batch["image"]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} batch image must be (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
    if len(batch["prompt"]) != image.shape[0]:
        raise ValueError(f"{name} batch has {image.shape[0]} images but {len(batch['prompt'])} prompts")


class _Objective:
    """The noise-prediction loss of one batch, with the frozen parts of the pipeline."""

    def __init__(self, pipe: StableDiffusionControlNetPipeline, seed: int, text_dropout: float) -> None:
        self.pipe = pipe
        self.device = pipe.unet.device
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.scheduler.config.prediction_type
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.text_dropout = float(text_dropout)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        kept = [p if self.rng.random() >= self.text_dropout else "" for p in prompts]
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(
            kept,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        with torch.no_grad():
            return self.pipe.text_encoder(ids)[0]

    def loss(self, batch: dict[str, Any], blank: bool) -> torch.Tensor:
        pipe = self.pipe
        dtype = pipe.unet.dtype
        image = batch["image"].to(self.device, dtype=pipe.vae.dtype)
        with torch.no_grad():
            latents = pipe.vae.encode(image).latent_dist.sample(self.generator)
            latents = (latents * pipe.vae.config.scaling_factor).to(dtype)
        count = latents.shape[0]
        noise = randn_tensor(latents.shape, generator=self.generator, device=self.device, dtype=dtype)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (count,), generator=self.generator).to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        text = self.encode_text(list(batch["prompt"])).to(dtype)
        if blank:
            conditions = torch.zeros(count, pipe.controlnet.config.conditioning_channels, *image.shape[2:])
        else:
            conditions = batch["conditions"]
        conditions = conditions.to(self.device, dtype=pipe.controlnet.dtype)
        down, mid = pipe.controlnet(
            noisy, timesteps, encoder_hidden_states=text, controlnet_cond=conditions, return_dict=False
        )
        prediction = pipe.unet(
            noisy,
            timesteps,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        if self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(prediction.float(), target.float())


def train_controlnet(
    pipe: StableDiffusionControlNetPipeline,
    batches: Iterable[dict[str, Any]],
    steps: int,
    out_dir: Path | str,
    lr: float = 1e-5,
    seed: int = 0,
    text_dropout: float = 0.1,
    bg_batches: Iterable[dict[str, Any]] | None = None,
    bg_every: int = 0,
    bg_weight: float = 1.0,
    log: Callable[[dict[str, Any]], None] | None = None,
    base: dict[str, Any] | None = None,
    max_grad_norm: float = 1.0,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``pipe.controlnet`` for ``steps`` steps and save the whole pipeline to ``out_dir``.

    ``batches`` yields dicts with ``image`` (B, 3, H, W) in [-1, 1], ``conditions`` (B, 9, H, W) in
    [0, 1] and ``prompt`` (B strings); a list is cycled, a one-shot iterator ends training early.
    ``bg_batches`` (conditions ignored: blank) is used every ``bg_every`` steps when both are given.
    ``base`` describes the starting model for the record (default: ``pipe.hoigen_info`` set by
    ``load_pipeline``); ``data`` describes the training data for the record. Returns the
    statistics also written to ``out_dir/hoigen_train.json``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= text_dropout <= 1.0:
        raise ValueError(f"text_dropout must lie in [0, 1], got {text_dropout}")
    controlnet = pipe.controlnet
    if controlnet.dtype != torch.float32:
        raise HoigenError(
            f"training needs float32 weights, the pipeline holds {controlnet.dtype}; "
            "load it with dtype float32"
        )
    use_bg = bg_batches is not None and bg_every > 0
    source = _Batches(batches, "training data")
    background = _Batches(bg_batches, "background buffer") if use_bg else None
    objective = _Objective(pipe, seed, text_dropout)

    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.requires_grad_(False)
        module.eval()
    controlnet.requires_grad_(True)
    controlnet.train()
    parameters = [p for p in controlnet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2)

    losses: list[float] = []
    bg_losses: list[float] = []
    started = time.perf_counter()
    done = 0
    try:
        for step in range(1, steps + 1):
            batch = source.next()
            if batch is None:
                break
            _check_batch(batch, "training", need_conditions=True)
            loss = objective.loss(batch, blank=False)
            total = loss
            bg_loss = None
            if background is not None and step % bg_every == 0:
                bg_batch = background.next()
                if bg_batch is not None:
                    _check_batch(bg_batch, "background", need_conditions=False)
                    bg_loss = objective.loss(bg_batch, blank=True)
                    total = loss + bg_weight * bg_loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            optimizer.step()
            done = step
            losses.append(float(loss.detach()))
            entry: dict[str, Any] = {"step": step, "loss": losses[-1]}
            if bg_loss is not None:
                bg_losses.append(float(bg_loss.detach()))
                entry["bg_loss"] = bg_losses[-1]
            if log is not None:
                log(entry)
    finally:
        controlnet.requires_grad_(False)
        controlnet.eval()
    if done == 0:
        raise HoigenError("training data: no training batches; give at least one sample")
    seconds = time.perf_counter() - started

    import diffusers

    stats: dict[str, Any] = {
        "steps": done,
        "steps_requested": steps,
        "lr": lr,
        "seed": seed,
        "text_dropout": text_dropout,
        "bg_every": bg_every if use_bg else 0,
        "bg_weight": bg_weight if use_bg else 0.0,
        "prediction_type": objective.prediction_type,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "mean_loss": float(np.mean(losses)),
        "losses": losses,
        "bg_losses": bg_losses,
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / done, 4),
        "base": base if base is not None else getattr(pipe, "hoigen_info", None),
        "data": data,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with quiet():
        pipe.save_pretrained(out_dir)
    # Written last: its presence marks a complete save.
    (out_dir / TRAIN_RECORD).write_text(json.dumps(stats, indent=2) + "\n")
    stats["out_dir"] = str(out_dir)
    return stats
