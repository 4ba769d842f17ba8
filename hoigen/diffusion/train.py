"""Fine-tuning the ControlNet on hand-object images, with HOIDiffusion's background regularisation.

The objective is the standard latent-diffusion one: encode the target image with the VAE, add noise
at a random timestep, and regress the noise (or the velocity, for v-prediction schedulers) from the
UNet, whose blocks receive the ControlNet's residuals computed from the 9-channel conditions. The
ControlNet learns; VAE and text encoder stay frozen; the UNet stays frozen except, with
``train_unet_attention``, its attention layers (``attn1`` self- and ``attn2`` cross-attention).

Two regularisers from the paper:

- text dropout: each prompt is replaced by "" with probability ``text_dropout`` (classifier-free
  guidance needs the unconditional branch);
- background regularisation (paper eq. 3): every ``bg_every`` steps a batch from the background
  buffer (scenery images, blank = all-zero conditions, their own captions) adds
  ``bg_weight * L_bg`` to the loss, so the model keeps painting diverse backgrounds from text.
  With ``bg_weight`` 0 (or no buffer) no background batch is ever drawn.

Engineering (``TrainSettings``): ``accelerate`` runs it on one or many GPUs and in mixed precision
(``accelerate launch -m hoigen train ...``: each process takes its slice of every global batch);
gradient checkpointing; 8-bit AdamW (``bitsandbytes``, imported only when asked for); an EMA of the
weights; checkpoints every N steps with full resume (:mod:`hoigen.diffusion.checkpoint`);
validation contact sheets every N steps (:mod:`hoigen.diffusion.validation`); a CSV log
(``train_log.csv``: step, loss, bg_loss, lr, seconds), TensorBoard when installed, a progress bar.

All randomness (noise, timesteps, VAE sampling, dropout, batch order) comes from generators seeded
with (``seed``, step, rank), so a run resumed from a checkpoint reproduces the uninterrupted run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hoigen.data.schema import derive_seed
from hoigen.diffusion.backend import DDPMScheduler, StableDiffusionControlNetPipeline, randn_tensor
from hoigen.diffusion.backend import quiet as quiet_warnings
from hoigen.errors import HoigenError

TRAIN_RECORD = "hoigen_train.json"
TRAIN_LOG = "train_log.csv"
LOG_COLUMNS = ("step", "loss", "bg_loss", "lr", "seconds")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainSettings:
    """How to train beyond the objective (defaults: plain single-process float32 AdamW)."""

    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    lr_warmup_steps: int = 0
    train_unet_attention: bool = False
    train_unet: bool = False  # the whole UNet learns too (training a tiny model from scratch: tiny_build)
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # no | fp16 | bf16
    use_8bit_adam: bool = False
    ema_decay: float = 0.0  # 0 = no EMA
    checkpoint_every: int = 0  # 0 = no checkpoints
    keep_checkpoints: int = 3
    resume: str = "auto"  # auto | never | a checkpoint folder
    validate_every: int = 0  # 0 = no validation images
    validation_images: int = 4
    validation_steps: int = 20
    validation_guidance: float = 7.5

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise HoigenError(
                f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        for name in ("lr_warmup_steps", "checkpoint_every", "keep_checkpoints", "validate_every"):
            if getattr(self, name) < 0:
                raise HoigenError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not (self.ema_decay == 0.0 or 0.0 < self.ema_decay < 1.0):
            raise HoigenError(f"--ema-decay must be 0 (off) or in (0, 1), got {self.ema_decay}")

    @classmethod
    def from_options(cls, options: Any) -> TrainSettings:
        """The settings named like fields of ``options`` (a ``TrainOptions``)."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(cls) if hasattr(options, f.name)})


class _Source:
    """Batch ``i`` (0-based) of a training or background source.

    Accepts an object with ``batch(i, rank, world)`` (``train_data.ExampleBatches``: stateless), a
    sequence of batches (cycled) or a one-shot iterator (ends training when exhausted; on resume the
    batches already used are skipped).
    """

    def __init__(self, batches: Any, name: str) -> None:
        self.name = name
        self.batches = batches
        self.indexed = hasattr(batches, "batch")
        self.sequence = isinstance(batches, Sequence)
        if self.sequence and not batches:
            raise HoigenError(f"{name}: no training batches; give at least one sample")
        self.iterator = None if self.indexed or self.sequence else iter(batches)
        self.position = 0

    def get(self, i: int, rank: int, world: int) -> dict[str, Any] | None:
        if self.indexed:
            return self.batches.batch(i, rank, world)
        if self.sequence:
            return self.batches[i % len(self.batches)]
        batch = None
        while self.position <= i:
            try:
                batch = next(self.iterator)
            except StopIteration:
                return None
            self.position += 1
        return batch


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
    """The noise-prediction loss of one batch; randomness seeded by (seed, stream, step, rank)."""

    def __init__(
        self,
        pipe: StableDiffusionControlNetPipeline,
        controlnet: Any,
        unet: Any,
        seed: int,
        text_dropout: float,
        device: torch.device,
        weight_dtype: torch.dtype,
    ) -> None:
        self.pipe = pipe
        self.controlnet = controlnet
        self.unet = unet
        self.device = device
        self.weight_dtype = weight_dtype
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.scheduler.config.prediction_type
        self.seed = seed
        self.text_dropout = float(text_dropout)

    def encode_text(self, prompts: list[str], rng: np.random.Generator) -> torch.Tensor:
        kept = [p if rng.random() >= self.text_dropout else "" for p in prompts]
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(
            kept, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        with torch.no_grad():
            return self.pipe.text_encoder(ids)[0]

    def loss(self, batch: dict[str, Any], blank: bool, stream: str, step: int, rank: int) -> torch.Tensor:
        pipe = self.pipe
        seed = derive_seed(self.seed, "train", stream, step, rank)
        generator = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        image = batch["image"].to(self.device, dtype=pipe.vae.dtype)
        with torch.no_grad():
            latents = pipe.vae.encode(image).latent_dist.sample(generator)
            latents = (latents * pipe.vae.config.scaling_factor).to(self.weight_dtype)
        count = latents.shape[0]
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=latents.dtype)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (count,), generator=generator).to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        text = self.encode_text(list(batch["prompt"]), rng).to(self.weight_dtype)
        if blank:
            conditions = torch.zeros(count, pipe.controlnet.config.conditioning_channels, *image.shape[2:])
        else:
            conditions = batch["conditions"]
        conditions = conditions.to(self.device, dtype=self.weight_dtype)
        down, mid = self.controlnet(
            noisy, timesteps, encoder_hidden_states=text, controlnet_cond=conditions, return_dict=False
        )
        prediction = self.unet(
            noisy,
            timesteps,
            encoder_hidden_states=text,
            down_block_additional_residuals=[d.to(self.weight_dtype) for d in down],
            mid_block_additional_residual=mid.to(self.weight_dtype),
            return_dict=False,
        )[0]
        if self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(prediction.float(), target.float())


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a module; cast only when needed (diffusers warns about any cast, even float32 to float32)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def unet_attention_parameters(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The UNet's attention-layer parameters (``attn1`` self- and ``attn2`` cross-attention)."""
    return [(n, p) for n, p in unet.named_parameters() if ".attn1." in n or ".attn2." in n]


def _optimizer(parameters: list[torch.nn.Parameter], lr: float, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.use_8bit_adam:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise HoigenError(
                "--use-8bit-adam needs bitsandbytes, which is not installed; `pip install bitsandbytes` "
                "(CUDA only) or leave the flag out"
            )
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(parameters, lr=lr, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=settings.weight_decay)


def _accelerator(settings: TrainSettings) -> Any:
    from accelerate import Accelerator

    try:
        # cpu=True without CUDA: accelerate sets up multi-process CPU (gloo) training only when told.
        return Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available())
    except (ValueError, RuntimeError) as error:
        raise HoigenError(
            f"--mixed-precision {settings.mixed_precision}: {str(error).splitlines()[0]}; "
            "run training in a fresh process, or use --mixed-precision no"
        ) from None


class _Log:
    """``train_log.csv`` (rows after the resume step are dropped) and TensorBoard when installed."""

    def __init__(self, out_dir: Path, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / TRAIN_LOG
        rows: list[dict[str, str]] = []
        if start > 0 and self.path.exists():
            with self.path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("step", "").isdigit() and int(r["step"]) <= start]
        self.handle = self.path.open("w", newline="")
        self.csv = csv.DictWriter(self.handle, fieldnames=LOG_COLUMNS)
        self.csv.writeheader()
        self.csv.writerows(rows)
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start + 1)

    def write(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.csv.writerow({k: entry.get(k, "") for k in LOG_COLUMNS})
        self.handle.flush()
        if self.writer is not None:
            for name in ("loss", "bg_loss", "lr"):
                if entry.get(name) is not None:
                    self.writer.add_scalar(f"train/{name}", entry[name], entry["step"])

    def close(self) -> None:
        if self.enabled:
            self.handle.close()
            if self.writer is not None:
                self.writer.close()


def train_controlnet(
    pipe: StableDiffusionControlNetPipeline,
    batches: Iterable[dict[str, Any]] | Any,
    steps: int,
    out_dir: Path | str,
    lr: float = 1e-5,
    seed: int = 0,
    text_dropout: float = 0.1,
    bg_batches: Iterable[dict[str, Any]] | Any | None = None,
    bg_every: int = 0,
    bg_weight: float = 1.0,
    log: Callable[[dict[str, Any]], None] | None = None,
    base: dict[str, Any] | None = None,
    max_grad_norm: float | None = None,
    data: dict[str, Any] | None = None,
    settings: TrainSettings | None = None,
    validation: list[dict[str, Any]] | None = None,
    quiet: bool = True,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``pipe.controlnet`` for ``steps`` steps and save the whole pipeline to ``out_dir``.

    ``batches`` yields dicts with ``image`` (B, 3, H, W) in [-1, 1], ``conditions`` (B, 9, H, W) in
    [0, 1] and ``prompt`` (B strings): a ``train_data.ExampleBatches``, a list (cycled) or a
    one-shot iterator (ends training early). ``bg_batches`` (conditions ignored: blank) is used at
    every ``bg_every``-th step when both are given and ``bg_weight`` > 0. ``validation``: examples
    (``conditions``, ``prompt``) painted every ``settings.validate_every`` steps. ``base`` describes
    the starting model for the record (default: ``pipe.hoigen_info``); ``data`` the training data.
    Returns the statistics also written to ``out_dir/hoigen_train.json`` (written last: its
    presence marks a complete save).
    """
    settings = settings or TrainSettings()
    if max_grad_norm is not None:
        settings.max_grad_norm = max_grad_norm
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= text_dropout <= 1.0:
        raise ValueError(f"text_dropout must lie in [0, 1], got {text_dropout}")
    if pipe.controlnet.dtype != torch.float32:
        raise HoigenError(
            f"training needs float32 weights, the pipeline holds {pipe.controlnet.dtype}; load it with dtype float32"
        )
    from diffusers.optimization import get_scheduler

    from hoigen.diffusion.checkpoint import find_resume, load_checkpoint, save_checkpoint
    from hoigen.diffusion.ema import ParameterEMA

    out_dir = Path(out_dir)
    base = base if base is not None else getattr(pipe, "hoigen_info", None)
    use_bg = bg_batches is not None and bg_every > 0 and bg_weight > 0
    source = _Source(batches, "training data")
    background = _Source(bg_batches, "background buffer") if use_bg else None

    accelerator = _accelerator(settings)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision, torch.float32)
    rank, world = accelerator.process_index, accelerator.num_processes

    controlnet, unet = pipe.controlnet, pipe.unet
    for module in (pipe.vae, pipe.text_encoder, unet):
        module.requires_grad_(False)
        module.eval()
    _place(pipe.vae, device, weight_dtype)
    _place(pipe.text_encoder, device, weight_dtype)
    unet_learns = settings.train_unet_attention or settings.train_unet
    _place(unet, device, torch.float32 if unet_learns else weight_dtype)
    _place(controlnet, device, torch.float32)
    controlnet.requires_grad_(True)
    controlnet.train()
    parameters = [p for p in controlnet.parameters() if p.requires_grad]
    if unet_learns:
        named = unet.named_parameters() if settings.train_unet else unet_attention_parameters(unet)
        for _, p in named:
            p.requires_grad_(True)
            parameters.append(p)
    if settings.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        unet.enable_gradient_checkpointing()
        unet.train()  # diffusers checkpoints only in training mode; the UNet has no dropout to switch
    optimizer = _optimizer(parameters, lr, settings)
    scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=settings.lr_warmup_steps * world,
        num_training_steps=steps * world,
    )
    if unet_learns:
        controlnet, unet, optimizer, scheduler = accelerator.prepare(controlnet, unet, optimizer, scheduler)
    else:
        controlnet, optimizer, scheduler = accelerator.prepare(controlnet, optimizer, scheduler)
    ema = ParameterEMA(parameters, settings.ema_decay) if settings.ema_decay > 0 else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    objective = _Objective(pipe, controlnet, unet, seed, text_dropout, device, weight_dtype)

    losses: list[float] = []
    bg_losses: list[float] = []
    start = 0
    resumed_from = find_resume(out_dir, settings.resume)
    if resumed_from is not None:
        state = load_checkpoint(accelerator, resumed_from)
        if state.get("seed") != seed:
            raise HoigenError(
                f"{resumed_from}: this checkpoint was made with --seed {state.get('seed')}; pass that seed, "
                "or --resume never to start again"
            )
        start, losses, bg_losses = int(state["step"]), list(state["losses"]), list(state["bg_losses"])
        if start > steps:
            raise HoigenError(
                f"{resumed_from}: this checkpoint is at step {start}, past --steps {steps}; "
                "ask for more steps, or pass --resume never to start again"
            )
    main = accelerator.is_main_process
    csv_log = _Log(out_dir, start, main)
    started = time.perf_counter()
    done = start
    from hoigen.data.progress import make_progress

    try:
        with make_progress(quiet or not main) as progress:
            bar = progress.add_task("train", total=steps, completed=start, status="")
            for step in range(start + 1, steps + 1):
                batch = source.get(step - 1, rank, world)
                if batch is None:
                    break
                _check_batch(batch, "training", need_conditions=True)
                loss = objective.loss(batch, blank=False, stream="data", step=step, rank=rank)
                total = loss
                bg_loss = None
                if background is not None and step % bg_every == 0:
                    bg_batch = background.get(step // bg_every - 1, rank, world)
                    if bg_batch is not None:
                        _check_batch(bg_batch, "background", need_conditions=False)
                        bg_loss = objective.loss(bg_batch, blank=True, stream="background", step=step, rank=rank)
                        total = loss + bg_weight * bg_loss
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(total)
                if settings.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(parameters, settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update()
                done = step
                losses.append(float(accelerator.reduce(loss.detach(), "mean")))
                entry: dict[str, Any] = {"step": step, "loss": losses[-1]}
                if bg_loss is not None:
                    bg_losses.append(float(accelerator.reduce(bg_loss.detach(), "mean")))
                    entry["bg_loss"] = bg_losses[-1]
                csv_log.write(
                    {**entry, "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 3)}
                )
                progress.update(bar, advance=1, status=f"loss {losses[-1]:.4f}")
                if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                    state = {"step": step, "seed": seed, "losses": losses, "bg_losses": bg_losses, "lr": lr}
                    save_checkpoint(accelerator, out_dir, step, state, settings.keep_checkpoints)
                if settings.validate_every and validation and step % settings.validate_every == 0 and main:
                    _validate(pipe, accelerator, controlnet, unet, ema, validation, out_dir, step, settings)
                if log is not None:
                    log(entry)
    finally:
        csv_log.close()
        for module in (controlnet, unet):
            accelerator.unwrap_model(module).requires_grad_(False)
            accelerator.unwrap_model(module).eval()
    if not losses:
        raise HoigenError("training data: no training batches; give at least one sample")
    seconds = time.perf_counter() - started

    if ema is not None:
        ema.swap_in()  # the averaged weights are the result
    pipe.controlnet = accelerator.unwrap_model(controlnet)
    pipe.unet = accelerator.unwrap_model(unet)
    import diffusers

    trained_steps = done - start
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
        "seconds_per_step": round(seconds / trained_steps, 4) if trained_steps else None,
        "resumed_from": str(resumed_from) if resumed_from is not None else None,
        "resumed_at_step": start,
        "processes": world,
        "process_index": rank,
        "device": str(device),
        "settings": asdict(settings),
        "trained": ["controlnet"]
        + (["unet"] if settings.train_unet else ["unet attention"] if settings.train_unet_attention else []),
        "ema": ema is not None,
        "options": options,
        "base": base,
        "data": data,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    if main:
        for module in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.controlnet):
            _place(module, module.device, torch.float32)
        out_dir.mkdir(parents=True, exist_ok=True)
        with quiet_warnings():
            pipe.save_pretrained(out_dir)
        (out_dir / TRAIN_RECORD).write_text(json.dumps(stats, indent=2) + "\n")
    accelerator.wait_for_everyone()
    stats["out_dir"] = str(out_dir)
    return stats


def _validate(
    pipe: StableDiffusionControlNetPipeline,
    accelerator: Any,
    controlnet: Any,
    unet: Any,
    ema: Any,
    examples: list[dict[str, Any]],
    out_dir: Path,
    step: int,
    settings: TrainSettings,
) -> Path:
    """Paint the validation examples with the current (EMA) weights; training mode is restored."""
    from hoigen.diffusion.validation import render_validation

    net, body = accelerator.unwrap_model(controlnet), accelerator.unwrap_model(unet)
    live_cn, live_unet = pipe.controlnet, pipe.unet
    modes = (net.training, body.training)
    pipe.controlnet, pipe.unet = net, body
    net.eval()
    body.eval()
    if ema is not None:
        ema.swap_in()
    # Mixed precision leaves the frozen parts in fp16/bf16 and the trained ones in fp32; the pipeline
    # call wants one dtype, so validation runs in float32 (and the dtypes are put back after).
    parts = (pipe.vae, pipe.text_encoder, body, net)
    dtypes = [m.dtype for m in parts]
    for module in parts:
        _place(module, module.device, torch.float32)
    try:
        with torch.no_grad():
            return render_validation(
                pipe, examples, out_dir, step, settings.validation_steps, settings.validation_guidance
            )
    finally:
        for module, dtype in zip(parts, dtypes, strict=True):
            _place(module, module.device, dtype)
        if ema is not None:
            ema.swap_out()
        net.train(modes[0])
        body.train(modes[1])
        pipe.controlnet, pipe.unet = live_cn, live_unet
