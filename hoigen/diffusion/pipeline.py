"""Loading the condition-to-image diffusion pipeline and painting images with it.

``load_pipeline`` resolves a model name to a ``diffusers.StableDiffusionControlNetPipeline``:

- ``None`` / ``"tiny-random"``: the tiny offline stand-in (``hoigen.diffusion.tiny``), random weights;
- ``"tiny-trained"``: the tiny stand-in with the weights shipped in the package, trained offline on
  hoigen renders (``hoigen.diffusion.tiny_build``); it paints shaded renders, not photos;
- a folder that ``hoigen train`` saved (``model_index.json`` naming a ``controlnet``): loaded whole;
- a Stable Diffusion folder or hub id: its components, plus the ControlNet from ``controlnet``
  (a ControlNet folder or hub id, or the whole folder ``hoigen train`` wrote: its ``controlnet/``
  is used) or, without one, a fresh ControlNet copied from the UNet (flagged
  ``untrained-controlnet``: its zero-initialised output convolutions leave the images unconditioned).

Hub ids are looked up in the local Hugging Face cache first (``local_files_only``); the hub is only
asked when the weights are not cached, the hub is not switched off (``HF_HUB_OFFLINE=1``) and its
host answers a 2-second TCP connect. Missing weights raise a one-line ``HoigenError`` that names the
model and says how to get it (``huggingface-cli download ...`` on a connected machine, or a local
folder).

``load_synthesis_pipeline`` (what ``hoigen synthesize`` uses) adds the real-weight paths: public
ControlNets (one, or a ``MultiControlNetModel`` of several, each of a kind: hoi, normal, pose, seg),
T2I-Adapters (``StableDiffusionAdapterPipeline``, a ``MultiAdapter`` for several; HOIDiffusion's
release via ``hoigen.diffusion.convert``), single-file LDM checkpoints (``from_single_file``), LoRAs
(``load_lora_weights`` + ``set_adapters``), ControlNet img2img, and plain text-to-image only when
asked for (``--controlnet none``). A real base model with nothing that follows the conditions is
refused. The conditions each kind is fed come from ``hoigen.diffusion.controls``.

The returned ``info`` dict says which model made the images; stand-ins are labelled as such and
``synthesize`` writes it into every sample's ``gen.json``.

Conditions go to diffusers as a (B, 9, H, W) float tensor in [0, 1]. The pipeline accepts that as is:
for tensors, its ``control_image_processor`` only resizes (bilinear, a no-op at the requested size)
and skips RGB conversion and normalisation (``do_normalize=False``), and ``check_image`` only counts
the batch. (It would pass a tensor with 4 = ``vae_latent_channels`` channels through unresized, which
never applies to the 9 channels here.)
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from hoigen.diffusion.backend import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    quiet,
)
from hoigen.diffusion.checkpoint import TRAIN_RECORD
from hoigen.diffusion.conditions import CONDITIONING_CHANNELS, scale_conditions
from hoigen.diffusion.tiny import TINY_MODEL_NAME, TINY_TRAINED_NAME, build_tiny_pipeline, load_tiny_trained
from hoigen.errors import HoigenError

DEFAULT_STEPS = 50  # DDIM steps of the original HOIDiffusion sampler
DEFAULT_GUIDANCE = 7.5
SD15_HINT = "runwayml/stable-diffusion-v1-5"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """``None`` -> float16 on CUDA, float32 elsewhere; strings such as "fp16" or "bfloat16" accepted."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise HoigenError(f"unknown dtype {dtype!r}; use auto or one of {', '.join(sorted(_DTYPES))}") from None


def _offline() -> bool:
    """True when the hub is switched off (``HF_HUB_OFFLINE``) or its host does not answer."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return not _hub_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@lru_cache(maxsize=4)
def _hub_reachable(endpoint: str) -> bool:
    """One TCP connect to the hub's host (2 s), remembered for the process."""
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def _is_local(name: str) -> bool:
    """A name that exists on disk, or that cannot be a hub id, is meant as a local folder."""
    return Path(name).expanduser().exists() or not _HUB_ID.match(name)


def _from_pretrained(loader: Any, name: str, what: str, **kwargs: Any) -> Any:
    """Call ``loader(name, ...)``: local folders directly; hub ids from the cache first, then the hub."""
    if _is_local(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            if what == "ControlNet":
                hint = "pass the folder `hoigen train --out DIR` wrote, or a diffusers ControlNet folder"
            else:
                hint = (
                    f"pass a diffusers model folder (e.g. from `huggingface-cli download {SD15_HINT}`) "
                    "or leave --model out for the tiny stand-in"
                )
            raise HoigenError(f"{name}: {what} folder not found; {hint}")
        try:
            with quiet():
                return loader(str(path), local_files_only=True, **kwargs)
        except Exception as error:  # diffusers raises OSError, ValueError, EnvironmentError, ...
            raise HoigenError(
                f"{name}: cannot load the {what} from this folder ({_first_line(error)}); "
                "it must be a diffusers model folder (model_index.json or config.json with weights)"
            ) from None
    last: Exception | None = None
    for local_only in (True, False):
        if not local_only and _offline():
            break
        try:
            with quiet():
                return loader(name, local_files_only=local_only, **kwargs)
        except Exception as error:  # not cached / hub unreachable / no such repo
            last = error
    raise HoigenError(
        f"{name}: {what} weights not found locally and the model hub is not reachable "
        f"({_first_line(last)}); on a machine with access run `huggingface-cli download {name}` "
        "and pass the downloaded folder (or set HF_HOME to the cache holding it)"
    )


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip().splitlines() if error is not None else []
    return (text[0] if text else type(error).__name__)[:200]


def _load_controlnet(name: str) -> ControlNetModel:
    """A ControlNet folder or hub id, or a pipeline folder (``hoigen train`` output) holding ``controlnet/``."""
    path = Path(name).expanduser()
    if _is_local(name) and path.is_dir() and not (path / "config.json").is_file() and (path / "controlnet").is_dir():
        return _from_pretrained(ControlNetModel.from_pretrained, str(path / "controlnet"), "ControlNet")
    return _from_pretrained(ControlNetModel.from_pretrained, name, "ControlNet")


def _check_controlnet(controlnet: ControlNetModel, name: str) -> None:
    channels = controlnet.config.conditioning_channels
    if channels != CONDITIONING_CHANNELS:
        raise HoigenError(
            f"{name}: this ControlNet takes {channels} condition channels, hoigen feeds "
            f"{CONDITIONING_CHANNELS} (normal + seg + skeleton); pass a ControlNet trained by `hoigen train`"
        )


def _is_saved_controlnet_pipeline(path: Path) -> bool:
    index = path / "model_index.json"
    if not (index.is_file() and (path / "controlnet").is_dir()):
        return False
    try:
        return "controlnet" in json.loads(index.read_text())
    except (OSError, ValueError):
        return False


def _train_record(path: Path) -> dict[str, Any] | None:
    record = path / TRAIN_RECORD
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        raise HoigenError(f"{record}: unreadable training record; re-run `hoigen train`") from None


def load_pipeline(
    model: str | None = None,
    controlnet: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple[StableDiffusionControlNetPipeline, dict[str, Any]]:
    """Load the pipeline for ``model`` (+ ``controlnet``) on ``device``; returns (pipe, info)."""
    torch_dtype = resolve_dtype(dtype, device)
    info: dict[str, Any] = {"model": model or TINY_MODEL_NAME, "controlnet": controlnet}
    if model is None or model == TINY_MODEL_NAME:
        pipe = build_tiny_pipeline(seed=0)
        info["kind"] = TINY_MODEL_NAME
        info["note"] = "tiny stand-in with random weights built offline; not Stable Diffusion"
        if controlnet is not None:
            pipe.controlnet = _load_controlnet(controlnet)
            info["note"] = "tiny stand-in base model with random weights, not Stable Diffusion; ControlNet loaded"
    elif model == TINY_TRAINED_NAME:
        pipe, record = load_tiny_trained()
        info["kind"] = TINY_TRAINED_NAME
        info["note"] = record["note"]
        info["weights_sha256"] = record["weights_sha256"]
        if controlnet is not None:
            pipe.controlnet = _load_controlnet(controlnet)
            info["note"] = record["note"] + "; ControlNet loaded"
    elif _is_local(model) and _is_saved_controlnet_pipeline(Path(model).expanduser()):
        pipe = _from_pretrained(
            StableDiffusionControlNetPipeline.from_pretrained,
            model,
            "trained pipeline",
            safety_checker=None,
            requires_safety_checker=False,
        )
        record = _train_record(Path(model).expanduser())
        if record is not None:
            base = record.get("base") or {}
            info["base"] = base
            tiny_base = base.get("kind") in (TINY_MODEL_NAME, TINY_TRAINED_NAME)
            info["kind"] = "tiny-trained" if tiny_base else "trained"
        else:
            info["kind"] = "pretrained"
        if controlnet is not None:
            pipe.controlnet = _load_controlnet(controlnet)
    elif controlnet is not None:
        net = _load_controlnet(controlnet)
        info["kind"] = "pretrained"
        pipe = _from_pretrained(
            StableDiffusionControlNetPipeline.from_pretrained,
            model,
            "Stable Diffusion",
            controlnet=net,
            safety_checker=None,
            requires_safety_checker=False,
        )
    else:
        info["kind"] = "untrained-controlnet"
        info["note"] = "ControlNet copied from the UNet, never trained: images ignore the conditions"
        pipe = _from_pretrained(
            _load_sd_with_fresh_controlnet,
            model,
            "Stable Diffusion",
            safety_checker=None,
            requires_safety_checker=False,
        )
    _check_controlnet(pipe.controlnet, controlnet or str(info["model"]))
    # Cast only when needed: diffusers warns about casting even when float32 stays float32.
    pipe.to(device=device, dtype=None if torch_dtype == pipe.unet.dtype else torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    info["dtype"] = str(torch_dtype).removeprefix("torch.")
    info["device"] = str(device)
    pipe.hoigen_info = dict(info)
    return pipe, info


def _load_sd_with_fresh_controlnet(name: str, **kwargs: Any) -> StableDiffusionControlNetPipeline:
    """A Stable Diffusion pipeline plus a ControlNet initialised from its UNet (seeded, deterministic)."""
    base = StableDiffusionPipeline.from_pretrained(name, **kwargs)
    # The condition encoder must downsample by the VAE factor: one stride-2 stage per level after the first.
    levels = max(base.vae_scale_factor.bit_length(), 1)
    embedding = tuple((16, 32, 96, 256)[:levels]) if levels <= 4 else (16,) * (levels - 4) + (16, 32, 96, 256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ControlNetModel.from_unet(
            base.unet,
            conditioning_channels=CONDITIONING_CHANNELS,
            conditioning_embedding_out_channels=embedding,
        )
    return StableDiffusionControlNetPipeline(**base.components, controlnet=net, requires_safety_checker=False)


class _CachedConditionEmbedding(torch.nn.Module):
    """The ControlNet's condition encoder, run once per condition tensor instead of once per step.

    The encoder does not see the timestep, and the pipeline passes the same condition tensor at
    every step, so its output is computed at the first step and reused (same values, fewer FLOPs).
    With ``blank_first_half`` the first half of the batch -- the unconditional branch of
    classifier-free guidance, as the pipeline stacks it -- is encoded from the blank condition.
    """

    def __init__(self, inner: torch.nn.Module, blank_first_half: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.blank_first_half = blank_first_half
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        key = (cond.data_ptr(), tuple(cond.shape), cond.dtype)  # alive and unchanged through one call
        if key != self._key or self._value is None:
            if self.blank_first_half:
                half = cond.shape[0] // 2
                cond = torch.cat([torch.zeros_like(cond[:half]), cond[half:]])
            self._key, self._value = key, self.inner(cond)
        return self._value


@contextmanager
def cached_condition_encoding(controlnet: Any, blank_uncond: bool = False) -> Iterator[None]:
    """Within the block, ``controlnet`` (or each net of a MultiControlNet) encodes each condition once."""
    nets = getattr(getattr(controlnet, "_orig_mod", controlnet), "nets", None)
    if nets is not None:
        with ExitStack() as stack:
            for net in nets:
                stack.enter_context(cached_condition_encoding(net, blank_uncond))
            yield
        return
    controlnet = getattr(controlnet, "_orig_mod", controlnet)  # under torch.compile: the module itself
    inner = getattr(controlnet, "controlnet_cond_embedding", None)
    if inner is None or isinstance(inner, _CachedConditionEmbedding) or torch.is_grad_enabled():
        if blank_uncond:
            raise RuntimeError("blank unconditional conditions need the condition encoder wrapper")
        yield
        return
    controlnet.controlnet_cond_embedding = _CachedConditionEmbedding(inner, blank_uncond)
    try:
        yield
    finally:
        controlnet.controlnet_cond_embedding = inner


def tune_pipeline(
    pipe: StableDiffusionControlNetPipeline, compile: bool = False, tiled_vae: bool = False  # noqa: A002
) -> list[str]:
    """Speed settings for a GPU; returns what was applied (for ``gen.json``).

    Always: PyTorch's scaled-dot-product attention (diffusers' ``AttnProcessor2_0``). On CUDA:
    channels-last memory for the UNet, ControlNet and VAE (faster convolutions with tensor cores).
    ``compile``: ``torch.compile`` of the UNet (slow first batch; CUDA only).
    ``tiled_vae``: the VAE decodes in overlapping tiles (bounded memory for big images; changes a
    few pixels where tiles blend). Nothing here changes CPU results unless ``tiled_vae`` is asked for.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    applied = ["sdpa"]
    controlnet = getattr(pipe, "controlnet", None)
    nets = list(getattr(controlnet, "nets", [controlnet] if controlnet is not None else []))
    for module in (pipe.unet, *nets):
        module.set_attn_processor(AttnProcessor2_0())
    cuda = pipe.unet.device.type == "cuda"
    if cuda:
        for module in (pipe.unet, *nets, pipe.vae):
            module.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    if compile and cuda:
        # The UNet holds most of the FLOPs; the ControlNet stays eager because its condition encoder
        # is swapped per call (cached_condition_encoding), which would make a compiled graph recompile.
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs")
        applied.append("compile-unet")
    if tiled_vae:
        pipe.vae.enable_tiling()
        applied.append("tiled-vae")
    return applied


def generate(
    pipe: Any,
    conditions: torch.Tensor | list[torch.Tensor] | None,
    prompts: list[str],
    seeds: list[int],
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    negative_prompt: str | None = None,
    control_scale: float | list[float] = 1.0,
    per_sample: bool = False,
    condition_scales: tuple[float, float, float] | None = None,
    video_anchor: int | None = None,
    blank_uncond: bool = False,
    init_images: torch.Tensor | None = None,
    strength: float = 0.8,
    control_start: float = 0.0,
    control_end: float = 1.0,
    height: int | None = None,
    width: int | None = None,
    prompt_cache: PromptEmbeddings | None = None,
) -> list[np.ndarray]:
    """Paint one (H, W, 3) uint8 image per condition tensor, prompt and seed.

    Each sample draws its initial noise from its own ``torch.Generator`` on the pipeline's device,
    seeded with its seed (DDIM with eta 0 adds no further noise; on CPU these are the CPU generators
    of earlier versions, so CPU images are unchanged; on CUDA the noise comes from the CUDA generator,
    so GPU images differ from those of versions that drew it on the CPU), so an image depends on its own
    inputs only, not on the batch
    -- up to float rounding: batched convolutions round differently from single ones, so on CPU about
    0.03 % of pixels differ by one level between batch sizes. ``per_sample=True`` runs the samples
    one at a time, making every image bit-identical whatever the batch (slower on a GPU).

    ``conditions``: a (B, 9, H, W) tensor for the fused HOI ControlNet, or one (B, C, H, W) tensor per
    ControlNet / adapter of the pipeline (``hoigen.diffusion.controls``), or None for plain
    text-to-image (then ``height``/``width`` give the size). ``condition_scales`` weights the normal,
    seg and skeleton maps of 9-channel tensors (``conditions.scale_conditions``); ``control_scale``
    weights each ControlNet's (or adapter's) output: one number, or one per model.
    ``control_start``/``control_end``: the fraction of steps the ControlNets act in.
    ``init_images`` (B, 3, H, W) in [0, 1]: ControlNet img2img from these images at ``strength``.
    ``video_anchor``: the batch is the frames of one trajectory, in order, and every frame's
    self-attention also attends to frame ``video_anchor`` (``hoigen.diffusion.video``); give all
    frames the same seed for one shared noise. ``blank_uncond``: the unconditional branch of
    classifier-free guidance sees the blank condition instead of the sample's (the paper's pairing of
    blank conditions with classifier-free guidance), so guidance also pushes toward the geometry; no
    effect when ``guidance`` <= 1. The whole batch is denoised and VAE-decoded together.

    ``prompt_cache``: text embeddings come from this cache (each prompt and negative prompt encoded once
    while it stays in the cache; the same values as encoding them with the batch). Without one the
    pipeline encodes the batch's prompts itself. The decoded images stay on the device until they are
    uint8; one transfer per batch brings them to the host.
    """
    fused = isinstance(conditions, torch.Tensor)
    tensors = [conditions] if fused else list(conditions or [])
    if fused and (conditions.ndim != 4 or conditions.shape[1] != CONDITIONING_CHANNELS):
        shape = tuple(conditions.shape)
        raise ValueError(f"conditions must be (B, {CONDITIONING_CHANNELS}, H, W), got {shape}")
    if tensors:
        batch, _, height, width = tensors[0].shape
        if any(t.ndim != 4 or t.shape[0] != batch or t.shape[2:] != (height, width) for t in tensors):
            raise ValueError(f"condition tensors differ in batch or size: {[tuple(t.shape) for t in tensors]}")
    else:
        batch = len(prompts)
        if height is None or width is None:
            raise ValueError("plain text-to-image needs height and width")
    if len(prompts) != batch or len(seeds) != batch:
        raise ValueError(
            f"{batch} conditions need as many prompts and seeds, got {len(prompts)} and {len(seeds)}"
        )
    factor = pipe.vae_scale_factor
    if height % factor or width % factor:
        raise HoigenError(
            f"image size {width}x{height} is not a multiple of {factor}; choose a size divisible by {factor}"
        )
    if batch == 0:
        return []
    check_conditions([t for t in tensors if t.device.type == "cpu"])  # device tensors: checked before the copy
    if video_anchor is not None and not 0 <= video_anchor < batch:
        raise ValueError(f"video anchor {video_anchor} is not one of the {batch} frames")
    if per_sample and batch > 1 and video_anchor is None:
        return [
            image
            for i in range(batch)
            for image in generate(
                pipe, conditions[i : i + 1] if fused else [t[i : i + 1] for t in tensors], [prompts[i]], [seeds[i]],
                steps, guidance, negative_prompt, control_scale, condition_scales=condition_scales,
                blank_uncond=blank_uncond, init_images=None if init_images is None else init_images[i : i + 1],
                strength=strength, control_start=control_start, control_end=control_end, height=height, width=width,
                prompt_cache=prompt_cache,
            )
        ]
    tensors = [scale_conditions(t.float(), condition_scales) if t.shape[1] == CONDITIONING_CHANNELS else t.float()
               for t in tensors]
    device = pipeline_device(pipe)
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    from hoigen.diffusion.video import anchor_attention

    video = anchor_attention(pipe, batch, video_anchor) if video_anchor is not None else nullcontext()
    blank = bool(blank_uncond) and float(guidance) > 1.0
    kwargs: dict[str, Any] = {}
    controlnet = getattr(pipe, "controlnet", None)
    adapter = getattr(pipe, "adapter", None)
    scales = control_scale if isinstance(control_scale, (list, tuple)) else [float(control_scale)] * len(tensors)
    many = len(tensors) > 1
    image = tensors if many else (tensors[0] if tensors else None)
    if controlnet is not None:
        kwargs["controlnet_conditioning_scale"] = [float(s) for s in scales] if many else float(scales[0])
        if (control_start, control_end) != (0.0, 1.0):
            kwargs["control_guidance_start"] = [float(control_start)] * len(tensors) if many else float(control_start)
            kwargs["control_guidance_end"] = [float(control_end)] * len(tensors) if many else float(control_end)
        if init_images is not None:
            if int(int(steps) * float(strength)) < 1:
                raise HoigenError(f"--strength {strength} of --steps {steps} leaves no denoising step; raise either")
            kwargs.update(image=init_images.float(), control_image=image, strength=float(strength))
        else:
            kwargs["image"] = image
    elif adapter is not None:
        if blank:
            raise HoigenError("--blank-uncond works with ControlNets only, not with --adapter")
        kwargs["adapter_conditioning_scale"] = [float(s) for s in scales] if many else float(scales[0])
        kwargs["image"] = image
    elif blank:
        raise HoigenError("--blank-uncond needs a ControlNet")
    encoding = cached_condition_encoding(controlnet, blank) if controlnet is not None else nullcontext()
    with torch.inference_mode(), encoding, video, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the adapter pipeline's deprecated decode_latents
        if prompt_cache is not None:
            kwargs["prompt_embeds"], negative = prompt_cache.batch(prompts, negative_prompt)
            if float(guidance) > 1.0:
                kwargs["negative_prompt_embeds"] = negative
        else:
            kwargs["prompt"] = list(prompts)
            kwargs["negative_prompt"] = [negative_prompt] * batch if negative_prompt else None
        # The adapter pipeline has no tensor output (it converts to numpy on the host): take its latents.
        latent_out = adapter is not None
        result = pipe(
            height=height,
            width=width,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            generator=generators,
            output_type="latent" if latent_out else "pt",
            **kwargs,
        )
        images = _decode_latents(pipe, result.images) if latent_out else result.images
        host = to_uint8(images).cpu()  # the batch's one device sync and transfer
    return list(host.numpy())


def check_conditions(tensors: list[torch.Tensor]) -> None:
    """A ValueError unless every condition tensor lies in [0, 1]."""
    for t in tensors:
        low, high = torch.aminmax(t)
        if float(low) < 0.0 or float(high) > 1.0:
            raise ValueError(f"conditions must lie in [0, 1], got [{float(low):.3g}, {float(high):.3g}]")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] (any float dtype, any device) -> (B, H, W, 3) uint8 on the same device.

    The same values as the numpy conversion of earlier versions: float32, clipped, times 255, rounded
    half to even."""
    return (images.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)


def _decode_latents(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """The adapter pipeline's own decoding (``decode_latents``) kept on the device: (B, 3, H, W) in [0, 1]."""
    image = pipe.vae.decode(1 / pipe.vae.config.scaling_factor * latents, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1)


def pipeline_device(pipe: Any) -> torch.device:
    """The device the pipeline computes on (that of its UNet)."""
    return getattr(pipe, "_execution_device", None) or pipe.unet.device


class PromptEmbeddings:
    """Text embeddings of a pipeline's prompts, each text encoded once while it stays cached (LRU).

    Every text is encoded alone (batch of one), so its embedding does not depend on which prompts
    share its batch; on CPU that equals encoding it inside a batch. Thread-safe. A negative prompt of
    None is the empty text, as the pipelines encode it."""

    def __init__(self, pipe: Any, size: int = 256) -> None:
        self.pipe, self.size = pipe, int(size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # texts run through the text encoder (for tests and benches)

    def get(self, text: str) -> torch.Tensor:
        """The (1, tokens, dim) embedding of ``text`` on the pipeline's device."""
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        with torch.inference_mode():
            value, _ = self.pipe.encode_prompt([text], pipeline_device(self.pipe), 1, False)
        with self._lock:
            self.encoded += 1
            self._cache[text] = value
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return value

    def batch(self, prompts: list[str], negative: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt embeddings, negative embeddings) of a batch, each (B, tokens, dim)."""
        embeds = torch.cat([self.get(p) for p in prompts])
        return embeds, self.get(negative or "").expand(len(prompts), -1, -1)


def prompt_embeddings(pipe: Any) -> PromptEmbeddings:
    """The pipeline's prompt cache (made on first use; it lives as long as the pipeline)."""
    cache = getattr(pipe, "hoigen_prompt_cache", None)
    if cache is None:
        cache = pipe.hoigen_prompt_cache = PromptEmbeddings(pipe)
    return cache


# --- synthesis with public ControlNets, T2I-Adapters, single files and LoRAs ----------------------

THREE_WAYS = (
    "public ControlNets (--controlnet normal=lllyasviel/control_v11p_sd15_normalbae "
    "--controlnet pose=lllyasviel/control_v11p_sd15_openpose --controlnet seg=lllyasviel/control_v11p_sd15_seg), "
    "HOIDiffusion's release (hoigen convert hoidiffusion SRC --out DIR, then --model DIR "
    "--adapter pose=DIR/adapters/pose --adapter normal=DIR/adapters/normal --adapter seg=DIR/adapters/seg) "
    "or your own HOI ControlNet "
    "(hoigen train --out MODEL, then --model MODEL); --controlnet none paints plain text-to-image on purpose"
)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_BASE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor")


@dataclass(frozen=True)
class ModelSpec:
    """Which models paint: a base, optional ControlNets or adapters (kind, id|dir), LoRAs (id|dir, scale)."""

    model: str = TINY_MODEL_NAME
    controlnets: tuple[tuple[str, str], ...] = ()  # (("none", ""),) = plain text-to-image on purpose
    adapters: tuple[tuple[str, str], ...] = ()
    loras: tuple[tuple[str, float], ...] = ()
    model_config: str | None = None  # configs + tokenizer for a single-file --model
    img2img: bool = False

    @property
    def unconditioned(self) -> bool:
        return self.controlnets == (("none", ""),)

    @property
    def kinds(self) -> list[str]:
        """The condition kinds fed, in the order of the models ([] for plain text-to-image; ["hoi"] by default)."""
        if self.unconditioned:
            return []
        if self.adapters:
            return [k for k, _ in self.adapters]
        return [k for k, _ in self.controlnets] or ["hoi"]

    @property
    def family(self) -> str:
        return "adapter" if self.adapters else "controlnet"


def _is_single_file(name: str) -> bool:
    path = Path(name).expanduser()
    return path.suffix.lower() in SINGLE_FILE_SUFFIXES and (path.is_file() or not path.exists())


def _load_single_file(name: str, config: str | None) -> StableDiffusionPipeline:
    """An LDM/CompVis-layout checkpoint (.safetensors, .ckpt) through diffusers' own conversion."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise HoigenError(f"{name}: checkpoint file not found; pass a .safetensors/.ckpt file or a diffusers folder")
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if config is not None:
        kwargs["config"] = str(Path(config).expanduser()) if _is_local(config) else config
    if config is None or _is_local(config) or _offline():
        kwargs["local_files_only"] = True
    try:
        with quiet():
            return StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    except Exception as error:  # diffusers raises many kinds; torch.load(weights_only=True) refuses pickled code
        raise HoigenError(
            f"{name}: cannot load this single-file checkpoint ({_first_line(error)}); it must be a Stable Diffusion "
            "1.x checkpoint in the LDM layout; pass --model-config with a diffusers SD folder or hub id for its "
            "configs and tokenizer (e.g. runwayml/stable-diffusion-v1-5) when the hub is not reachable"
        ) from None


def _load_base(spec: ModelSpec) -> tuple[dict[str, Any], str]:
    """The base model's components (no ControlNet) and its kind label."""
    model = spec.model
    if model == TINY_MODEL_NAME:
        return dict(build_tiny_pipeline(seed=0).components), TINY_MODEL_NAME
    if model == TINY_TRAINED_NAME:
        return dict(load_tiny_trained()[0].components), TINY_TRAINED_NAME
    if _is_single_file(model):
        return dict(_load_single_file(model, spec.model_config).components), "single-file"
    if _is_local(model) and _is_saved_controlnet_pipeline(Path(model).expanduser()):
        pipe, _ = load_pipeline(model)
        return dict(pipe.components), "trained-base"
    base = _from_pretrained(
        StableDiffusionPipeline.from_pretrained, model, "Stable Diffusion", safety_checker=None,
        requires_safety_checker=False,
    )
    return dict(base.components), "pretrained"


def _load_adapter(name: str) -> Any:
    from diffusers import T2IAdapter

    return _from_pretrained(T2IAdapter.from_pretrained, name, "T2I-Adapter")


def load_synthesis_pipeline(
    spec: ModelSpec, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> tuple[Any, dict[str, Any]]:
    """The pipeline ``spec`` asks for, and the record of every model that makes its images.

    Refuses a real base model with nothing that follows the conditions (the images would ignore the
    labels): a one-line ``HoigenError`` names the three ways to real conditioned images.
    """
    if spec.adapters and spec.controlnets:
        raise HoigenError("--adapter and --controlnet cannot be combined (no diffusers pipeline takes both); pick one")
    if spec.img2img and (spec.adapters or spec.unconditioned):
        raise HoigenError("--init shade paints with ControlNet img2img; use it with --controlnet, not --adapter/none")
    bare_real = spec.model not in (TINY_MODEL_NAME, TINY_TRAINED_NAME) and not (
        _is_local(spec.model) and _is_saved_controlnet_pipeline(Path(spec.model).expanduser())
    )
    if bare_real and _is_local(spec.model) and not Path(spec.model).expanduser().exists():
        what = "checkpoint file" if _is_single_file(spec.model) else "Stable Diffusion folder"
        raise HoigenError(
            f"{spec.model}: {what} not found; pass a diffusers model folder (e.g. from `huggingface-cli download "
            f"{SD15_HINT}`), a .safetensors/.ckpt checkpoint, or leave --model out for the tiny stand-in"
        )
    if bare_real and not spec.controlnets and not spec.adapters:
        raise HoigenError(
            f"--model {spec.model} has no ControlNet or adapter, so its images would ignore the labels; "
            f"use {THREE_WAYS}"
        )
    simple = (
        not spec.adapters and not spec.loras and not spec.img2img and not _is_single_file(spec.model)
        and [k for k, _ in spec.controlnets] in ([], ["hoi"])
    )
    if simple:  # the HOI ControlNet path as before (tiny stand-in, trained folder, SD + HOI ControlNet)
        name = spec.controlnets[0][1] if spec.controlnets else None
        pipe, info = load_pipeline(spec.model, name, device=device, dtype=dtype)
        info["controls"] = [{"kind": "hoi", "model": name or info["model"], "family": "controlnet"}]
        return pipe, info
    components, base_kind = _load_base(spec)
    own_controlnet = components.get("controlnet")  # the tiny stand-in's or a trained folder's HOI ControlNet
    components = {k: components.get(k) for k in _BASE_COMPONENTS}
    info: dict[str, Any] = {"model": spec.model, "base": base_kind, "controlnet": None}
    if spec.model_config is not None:
        info["model_config"] = spec.model_config
    if spec.unconditioned:
        pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
        info["kind"] = "unconditioned"
        info["note"] = "plain text-to-image (--controlnet none): the images do not follow the labels"
        info["controls"] = []
    elif spec.adapters:
        from diffusers import MultiAdapter, StableDiffusionAdapterPipeline

        nets = [_load_adapter(name) for _, name in spec.adapters]
        adapter = nets[0] if len(nets) == 1 else MultiAdapter(nets)
        pipe = StableDiffusionAdapterPipeline(**components, adapter=adapter, requires_safety_checker=False)
        info["kind"] = "adapter"
        info["controls"] = [{"kind": k, "model": n, "family": "adapter"} for k, n in spec.adapters]
    else:
        from diffusers import StableDiffusionControlNetImg2ImgPipeline
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        controlnets = list(spec.controlnets) or [("hoi", spec.model)]
        nets = []
        for kind, name in controlnets:
            net = own_controlnet if not spec.controlnets and own_controlnet is not None else _load_controlnet(name)
            want = CONDITIONING_CHANNELS if kind == "hoi" else 3
            if net.config.conditioning_channels != want:
                raise HoigenError(
                    f"--controlnet {kind}={name}: this ControlNet takes {net.config.conditioning_channels} condition "
                    f"channels, a {kind} ControlNet takes {want}; check the kind"
                )
            nets.append(net)
        controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
        cls = StableDiffusionControlNetImg2ImgPipeline if spec.img2img else StableDiffusionControlNetPipeline
        pipe = cls(**components, controlnet=controlnet, requires_safety_checker=False)
        info["kind"] = "controlnet-img2img" if spec.img2img else "controlnet"
        info["controlnet"] = controlnets[0][1] if len(controlnets) == 1 else None
        info["controls"] = [{"kind": k, "model": n, "family": "controlnet"} for k, n in controlnets]
    if spec.loras:
        _load_loras(pipe, spec.loras)
        info["loras"] = [{"model": n, "scale": s} for n, s in spec.loras]
    torch_dtype = resolve_dtype(dtype, device)
    pipe.to(device=device, dtype=None if torch_dtype == pipe.unet.dtype else torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    info["dtype"] = str(torch_dtype).removeprefix("torch.")
    info["device"] = str(device)
    pipe.hoigen_info = dict(info)
    return pipe, info


def _load_loras(pipe: Any, loras: tuple[tuple[str, float], ...]) -> None:
    """Load each LoRA (a diffusers/kohya LoRA file or folder, or hub id) as a named adapter with its scale."""
    names = []
    for i, (name, _) in enumerate(loras):
        path = Path(name).expanduser()
        kwargs: dict[str, Any] = {"adapter_name": f"lora{i}"}
        source = str(path)
        if path.is_file():
            source, kwargs["weight_name"] = str(path.parent), path.name
        elif not path.exists() and _is_local(name):
            raise HoigenError(f"--lora {name}: not found; pass a LoRA folder, .safetensors file or hub id")
        try:
            with quiet():
                pipe.load_lora_weights(source if path.exists() else name, local_files_only=path.exists() or _offline(),
                                       **kwargs)
        except Exception as error:
            raise HoigenError(f"--lora {name}: cannot load this LoRA ({_first_line(error)})") from None
        names.append(f"lora{i}")
    pipe.set_adapters(names, adapter_weights=[float(s) for _, s in loras])
