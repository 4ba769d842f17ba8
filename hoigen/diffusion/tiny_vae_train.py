"""Training a tiny autoencoder (``diffusers.AutoencoderKL``) on render output, before any diffusion training.

A latent diffusion model can only paint what its VAE decodes, and a VAE with random weights decodes
any latent to coloured noise. This trains the tiny pipeline's VAE to reconstruct the images the
tiny-trained stand-in deals in: ``shade.png`` (the diffusion target) and the condition maps
(normals, coloured segmentation, skeleton) as extra RGB images of the same scenes.

Objective: L1 reconstruction of a posterior sample plus ``kl_weight`` times the KL term (Stable
Diffusion's autoencoder also trains with L1 and a tiny KL weight; its perceptual and adversarial
terms are left out at this size). Afterwards ``latent_scale`` gives the scaling factor that brings
the target images' latents to unit standard deviation (how Stable Diffusion's 0.18215 was chosen),
to be stored in the VAE config.

All randomness (batch draws, posterior samples) comes from generators seeded with (seed, step), so
a run is a pure function of its inputs on one machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hoigen.data.schema import derive_seed


@dataclass(frozen=True)
class VaeTrainSettings:
    """How the autoencoder is trained."""

    steps: int = 400
    batch_size: int = 8
    lr: float = 1e-3
    kl_weight: float = 1e-6
    max_grad_norm: float = 1.0
    seed: int = 0


def vae_training_images(examples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, maps): the examples' target images and their three condition maps as RGB, all in [-1, 1].

    ``examples`` hold ``image`` (3, H, W) in [-1, 1] and ``conditions`` (9, H, W) in [0, 1]
    (``hoigen.diffusion.train_data``); ``maps`` holds 3 images per example (normal, seg, skeleton).
    """
    targets = torch.stack([e["image"] for e in examples])
    conditions = torch.stack([e["conditions"] for e in examples])
    maps = conditions.reshape(len(examples) * 3, 3, *conditions.shape[2:]) * 2.0 - 1.0
    return targets, maps


def train_vae(
    vae: torch.nn.Module,
    targets: torch.Tensor,
    maps: torch.Tensor | None,
    settings: VaeTrainSettings,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``vae`` in place; each batch is half target images, half condition maps (all targets without maps).

    Returns statistics (losses per step, seconds). The VAE is left in eval mode without gradients.
    """
    if targets.ndim != 4 or targets.shape[1] != 3 or len(targets) == 0:
        raise ValueError(f"targets must be a non-empty (N, 3, H, W) tensor, got {tuple(targets.shape)}")
    vae.requires_grad_(True)
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    n_maps = 0 if maps is None or len(maps) == 0 else settings.batch_size // 2
    n_targets = settings.batch_size - n_maps
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(1, settings.steps + 1):
        seed = derive_seed(settings.seed, "vae", step)
        rng = np.random.default_rng(seed)
        parts = [targets[rng.integers(0, len(targets), n_targets)]]
        if n_maps:
            parts.append(maps[rng.integers(0, len(maps), n_maps)])
        batch = torch.cat(parts)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.sample(torch.Generator().manual_seed(seed))
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, batch) + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(vae.parameters(), settings.max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log({"step": step, "loss": losses[-1]})
    vae.requires_grad_(False)
    vae.eval()
    return {
        "steps": settings.steps,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "losses": losses,
        "seconds": round(time.perf_counter() - started, 3),
    }


@torch.no_grad()
def latent_scale(vae: torch.nn.Module, targets: torch.Tensor, batch_size: int = 32) -> float:
    """1 / std of the posterior means of ``targets``: the VAE's ``scaling_factor`` for these images."""
    means = [vae.encode(targets[i : i + batch_size]).latent_dist.mean for i in range(0, len(targets), batch_size)]
    return float(1.0 / torch.cat(means).float().std())


@torch.no_grad()
def reconstruction_error(vae: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> float:
    """Mean absolute error (in 0..255 levels) of decoding the posterior means of ``images`` ([-1, 1])."""
    errors = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        recon = vae.decode(vae.encode(chunk).latent_dist.mean).sample.clamp(-1, 1)
        errors.append((recon - chunk).abs().mean(dim=(1, 2, 3)) * 127.5)
    return float(torch.cat(errors).mean())
