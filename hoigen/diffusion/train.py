"""Fine-tuning the ControlNet on hand-object images, with HOIDiffusion's background regularisation.

The objective is the standard latent-diffusion one: encode the target image with the VAE, add noise
at a random timestep, and regress the noise (or the velocity, for v-prediction schedulers) from the
UNet, whose blocks receive the ControlNet's residuals computed from the 9-channel conditions. The
ControlNet learns; VAE and text encoder stay frozen; the UNet stays frozen except, with
``train_unet_attention``, its attention layers (``attn1`` self- and ``attn2`` cross-attention), or,
with ``train_unet``, all of it (a model trained from scratch: ``hoigen.diffusion.tiny_build``).

Two regularisers:

- text dropout: each prompt is replaced by "" with probability ``text_dropout`` (default 0: the
  original code defines it but never uses it; the base model already has its unconditional branch);
- background regularisation, so the model keeps painting diverse backgrounds from text, with
  batches from the background buffer (scenery images, blank = all-zero conditions, their own
  captions), in one of two forms (``bg_mode``):

  - ``swap`` (default; the original code): before each step a draw seeded by (seed, step), the same
    on every process, decides with probability ``bg_prob`` (0.1) that the whole step is a scenery
    step: the background batch replaces the HOI batch, and only its loss is optimised (no HOI loss
    that step). Same compute and memory per step as a plain step.
  - ``loss`` (the paper's eq. 3): every ``bg_every`` steps a background batch adds
    ``bg_weight * L_bg`` to that step's HOI loss. In expectation the background's share of the
    gradient is ``bg_weight / bg_every`` per step against swap's ``p / (1 - p)`` (0.1 vs 0.11 at the
    defaults).

  With no buffer, ``bg_prob`` 0 or ``bg_weight`` 0 no background batch is ever drawn. The steps that
  used one are listed in ``hoigen_train.json`` (``bg_steps``).

The trainer (:class:`ControlNetTrainer`) takes the typed ``TrainOptions`` (the same object the CLI
and recipes build) plus the pipeline, the data and the run seed. Engineering: ``accelerate`` runs it
on one or many GPUs and in mixed precision
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hoigen.data.schema import derive_seed
from hoigen.diffusion.backend import DDPMScheduler, StableDiffusionControlNetPipeline, randn_tensor
from hoigen.diffusion.backend import quiet as quiet_warnings
from hoigen.diffusion.checkpoint import TRAIN_RECORD
from hoigen.diffusion.options import TrainOptions
from hoigen.errors import HoigenError

TRAIN_LOG = "train_log.csv"
LOG_COLUMNS = ("step", "loss", "bg_loss", "lr", "seconds")
MIXED_PRECISION = ("no", "fp16", "bf16")


WEIGHT_DECAY = 1e-2  # AdamW weight decay (no option)
VALIDATION_GUIDANCE = 7.5  # guidance of the validation images (no option)
#: The options recorded under "settings" in hoigen_train.json, in this order (the constants above too).
RECORDED_SETTINGS = (
    "max_grad_norm", "weight_decay", "lr_scheduler", "lr_warmup_steps", "train_unet_attention", "train_unet",
    "gradient_checkpointing", "mixed_precision", "use_8bit_adam", "ema_decay", "checkpoint_every",
    "keep_checkpoints", "resume", "validate_every", "validation_images", "validation_steps", "validation_guidance",
)


def check_train_options(options: TrainOptions) -> None:
    """One-line errors for the engineering options ``TrainOptions`` itself does not check yet."""
    if options.mixed_precision not in MIXED_PRECISION:
        raise HoigenError(
            f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {options.mixed_precision!r}"
        )
    for name in ("lr_warmup_steps", "checkpoint_every", "keep_checkpoints", "validate_every"):
        if getattr(options, name) < 0:
            raise HoigenError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(options, name)}")
    if not (options.ema_decay == 0.0 or 0.0 < options.ema_decay < 1.0):
        raise HoigenError(f"--ema-decay must be 0 (off) or in (0, 1), got {options.ema_decay}")


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


def _optimizer(parameters: list[torch.nn.Parameter], options: TrainOptions) -> torch.optim.Optimizer:
    if options.use_8bit_adam:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise HoigenError(
                "--use-8bit-adam needs bitsandbytes, which is not installed; `pip install bitsandbytes` "
                "(CUDA only) or leave the flag out"
            )
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(parameters, lr=options.lr, weight_decay=WEIGHT_DECAY)
    return torch.optim.AdamW(parameters, lr=options.lr, weight_decay=WEIGHT_DECAY)


def _accelerator(mixed_precision: str) -> Any:
    from accelerate import Accelerator

    try:
        # cpu=True without CUDA: accelerate sets up multi-process CPU (gloo) training only when told.
        return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    except (ValueError, RuntimeError) as error:
        raise HoigenError(
            f"--mixed-precision {mixed_precision}: {str(error).splitlines()[0]}; "
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


class ControlNetTrainer:
    """Fine-tunes ``pipe.controlnet`` as ``options`` say and saves the whole pipeline to ``out_dir``.

    ``options`` is the typed ``TrainOptions`` (steps, lr, text dropout, background regularisation,
    engineering); its data fields (``data``, ``model``, ``batch_size``, ``size``, ``bg_dir``, ...)
    are for whoever builds the pipeline and the batches (:func:`hoigen.diffusion.train_data.train_from_shards`).
    ``seed`` is the run seed; ``base`` describes the starting model for the record (default:
    ``pipe.hoigen_info``), ``data`` the training data.
    """

    def __init__(
        self,
        pipe: StableDiffusionControlNetPipeline,
        options: TrainOptions,
        out_dir: Path | str,
        *,
        seed: int = 0,
        quiet: bool = True,
        base: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        check_train_options(options)
        if pipe.controlnet.dtype != torch.float32:
            raise HoigenError(
                f"training needs float32 weights, the pipeline holds {pipe.controlnet.dtype}; "
                "load it with dtype float32"
            )
        self.pipe, self.options, self.out_dir, self.seed, self.quiet = pipe, options, Path(out_dir), int(seed), quiet
        self.base = base if base is not None else getattr(pipe, "hoigen_info", None)
        self.data = data

    def train(
        self,
        batches: Iterable[dict[str, Any]] | Any,
        bg_batches: Iterable[dict[str, Any]] | Any | None = None,
        validation: list[dict[str, Any]] | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Train for ``options.steps`` steps (resuming from a checkpoint as ``options.resume`` says).

        ``batches`` yields dicts with ``image`` (B, 3, H, W) in [-1, 1], ``conditions`` (B, 9, H, W)
        in [0, 1] and ``prompt`` (B strings): a ``train_data.ExampleBatches``, a list (cycled) or a
        one-shot iterator (ends training early). ``bg_batches`` (conditions ignored: blank), when
        given, is used at the scenery steps (``bg_mode`` swap: batch ``step - 1``) or every
        ``bg_every``-th step (loss: batch ``step // bg_every - 1``). ``validation``: examples
        (``conditions``, ``prompt``) painted every ``validate_every`` steps. ``log`` gets each step's
        entry. Returns the statistics also written to ``out_dir/hoigen_train.json`` (written last:
        its presence marks a complete save).
        """
        opts = self.options
        self.use_bg = bg_batches is not None and opts.uses_background
        source = _Source(batches, "training data")
        background = _Source(bg_batches, "background buffer") if self.use_bg else None
        self._setup()
        start, losses, bg_losses, self.bg_steps = self._resume()
        main = self.accelerator.is_main_process
        csv_log = _Log(self.out_dir, start, main)
        started = time.perf_counter()
        done = start
        try:
            done = self._loop(source, background, validation, log, start, losses, bg_losses, csv_log, started)
        finally:
            csv_log.close()
            for module in (self.controlnet, self.unet):
                self.accelerator.unwrap_model(module).requires_grad_(False)
                self.accelerator.unwrap_model(module).eval()
        if not losses and not bg_losses:
            raise HoigenError("training data: no training batches; give at least one sample")
        return self._save(start, done, losses, bg_losses, time.perf_counter() - started)

    # ------------------------------------------------------------------ steps of train()
    def _setup(self) -> None:
        """Accelerator, devices and dtypes, trained parameters, optimiser, LR schedule, EMA, objective."""
        from diffusers.optimization import get_scheduler

        from hoigen.diffusion.ema import ParameterEMA

        opts, pipe = self.options, self.pipe
        accelerator = self.accelerator = _accelerator(opts.mixed_precision)
        device = self.device = accelerator.device
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(opts.mixed_precision, torch.float32)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes

        controlnet, unet = pipe.controlnet, pipe.unet
        for module in (pipe.vae, pipe.text_encoder, unet):
            module.requires_grad_(False)
            module.eval()
        _place(pipe.vae, device, weight_dtype)
        _place(pipe.text_encoder, device, weight_dtype)
        unet_learns = opts.train_unet_attention or opts.train_unet
        _place(unet, device, torch.float32 if unet_learns else weight_dtype)
        _place(controlnet, device, torch.float32)
        controlnet.requires_grad_(True)
        controlnet.train()
        parameters = [p for p in controlnet.parameters() if p.requires_grad]
        if unet_learns:
            named = unet.named_parameters() if opts.train_unet else unet_attention_parameters(unet)
            for _, p in named:
                p.requires_grad_(True)
                parameters.append(p)
        if opts.gradient_checkpointing:
            controlnet.enable_gradient_checkpointing()
            unet.enable_gradient_checkpointing()
            unet.train()  # diffusers checkpoints only in training mode; the UNet has no dropout to switch
        optimizer = _optimizer(parameters, opts)
        scheduler = get_scheduler(
            opts.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=opts.lr_warmup_steps * self.world,
            num_training_steps=opts.steps * self.world,
        )
        if unet_learns:
            controlnet, unet, optimizer, scheduler = accelerator.prepare(controlnet, unet, optimizer, scheduler)
        else:
            controlnet, optimizer, scheduler = accelerator.prepare(controlnet, optimizer, scheduler)
        self.ema = ParameterEMA(parameters, opts.ema_decay) if opts.ema_decay > 0 else None
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        self.controlnet, self.unet, self.parameters = controlnet, unet, parameters
        self.optimizer, self.scheduler = optimizer, scheduler
        self.objective = _Objective(pipe, controlnet, unet, self.seed, opts.text_dropout, device, weight_dtype)

    def _resume(self) -> tuple[int, list[float], list[float], list[int]]:
        """(start step, losses, background losses, background steps) of the checkpoint to resume from,
        or (0, [], [], [])."""
        from hoigen.diffusion.checkpoint import find_resume, load_checkpoint

        self.resumed_from = find_resume(self.out_dir, self.options.resume)
        if self.resumed_from is None:
            return 0, [], [], []
        state = load_checkpoint(self.accelerator, self.resumed_from)
        if state.get("seed") != self.seed:
            raise HoigenError(
                f"{self.resumed_from}: this checkpoint was made with --seed {state.get('seed')}; pass that seed, "
                "or --resume never to start again"
            )
        start = int(state["step"])
        if start > self.options.steps:
            raise HoigenError(
                f"{self.resumed_from}: this checkpoint is at step {start}, past --steps {self.options.steps}; "
                "ask for more steps, or pass --resume never to start again"
            )
        return start, list(state["losses"]), list(state["bg_losses"]), list(state.get("bg_steps", []))

    def _loop(
        self,
        source: _Source,
        background: _Source | None,
        validation: list[dict[str, Any]] | None,
        log: Callable[[dict[str, Any]], None] | None,
        start: int,
        losses: list[float],
        bg_losses: list[float],
        csv_log: _Log,
        started: float,
    ) -> int:
        """Steps ``start + 1 .. options.steps`` (fewer if a one-shot source ends); returns the last step."""
        from hoigen.data.progress import make_progress
        from hoigen.diffusion.checkpoint import save_checkpoint

        opts, accelerator, objective = self.options, self.accelerator, self.objective
        rank, world = self.rank, self.world
        main = accelerator.is_main_process
        done = start
        with make_progress(self.quiet or not main) as progress:
            bar = progress.add_task("train", total=opts.steps, completed=start, status="")
            for step in range(start + 1, opts.steps + 1):
                loss = bg_loss = None
                bg_batch = background.get(step - 1, rank, world) if self._swap_step(background, step) else None
                if bg_batch is not None:  # a scenery step (swap mode): the whole batch is background
                    _check_batch(bg_batch, "background", need_conditions=False)
                    bg_loss = objective.loss(bg_batch, blank=True, stream="background", step=step, rank=rank)
                    total = bg_loss
                else:
                    batch = source.get(step - 1, rank, world)
                    if batch is None:
                        break
                    _check_batch(batch, "training", need_conditions=True)
                    loss = objective.loss(batch, blank=False, stream="data", step=step, rank=rank)
                    total = loss
                    every = opts.loss_every
                    if background is not None and every and step % every == 0:
                        bg_batch = background.get(step // every - 1, rank, world)
                        if bg_batch is not None:
                            _check_batch(bg_batch, "background", need_conditions=False)
                            bg_loss = objective.loss(bg_batch, blank=True, stream="background", step=step, rank=rank)
                            total = loss + opts.loss_weight * bg_loss
                self.optimizer.zero_grad(set_to_none=True)
                accelerator.backward(total)
                if opts.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.parameters, opts.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update()
                done = step
                entry: dict[str, Any] = {"step": step}
                if loss is not None:
                    losses.append(float(accelerator.reduce(loss.detach(), "mean")))
                    entry["loss"] = losses[-1]
                if bg_loss is not None:
                    bg_losses.append(float(accelerator.reduce(bg_loss.detach(), "mean")))
                    self.bg_steps.append(step)
                    entry["bg_loss"] = bg_losses[-1]
                csv_log.write(
                    {**entry, "lr": self.scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 3)}
                )
                progress.update(bar, advance=1, status=f"loss {losses[-1]:.4f}" if losses else "scenery step")
                if opts.checkpoint_every and step % opts.checkpoint_every == 0:
                    state = {
                        "step": step, "seed": self.seed, "losses": losses, "bg_losses": bg_losses,
                        "bg_steps": self.bg_steps, "lr": opts.lr,
                    }  # fmt: skip
                    save_checkpoint(accelerator, self.out_dir, step, state, opts.keep_checkpoints)
                if opts.validate_every and validation and step % opts.validate_every == 0 and main:
                    _validate(
                        self.pipe, accelerator, self.controlnet, self.unet, self.ema, validation, self.out_dir, step,
                        opts,
                    )
                if log is not None:
                    log(entry)
        return done

    def _swap_step(self, background: _Source | None, step: int) -> bool:
        """Whether ``step`` is a scenery step (swap mode): a draw seeded by (seed, step), alike on every rank."""
        if background is None or self.options.swap_prob <= 0:
            return False
        draw = np.random.default_rng(derive_seed(self.seed, "train", "swap", step)).random()
        return bool(draw < self.options.swap_prob)

    def _save(self, start: int, done: int, losses: list[float], bg_losses: list[float], seconds: float) -> dict:
        """Put the trained (EMA) weights into the pipeline, save it with its record; the statistics."""
        import diffusers

        opts, pipe, accelerator = self.options, self.pipe, self.accelerator
        if self.ema is not None:
            self.ema.swap_in()  # the averaged weights are the result
        pipe.controlnet = accelerator.unwrap_model(self.controlnet)
        pipe.unet = accelerator.unwrap_model(self.unet)
        trained_steps = done - start
        constants = {"weight_decay": WEIGHT_DECAY, "validation_guidance": VALIDATION_GUIDANCE}
        stats: dict[str, Any] = {
            "steps": done,
            "steps_requested": opts.steps,
            "lr": opts.lr,
            "seed": self.seed,
            "text_dropout": opts.text_dropout,
            "bg_mode": opts.bg_mode,
            "bg_prob": opts.swap_prob if self.use_bg else 0.0,
            "bg_every": opts.loss_every if self.use_bg else 0,
            "bg_weight": opts.loss_weight if self.use_bg else 0.0,
            "prediction_type": self.objective.prediction_type,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "mean_loss": float(np.mean(losses)) if losses else None,
            "losses": losses,
            "bg_losses": bg_losses,
            "bg_steps": self.bg_steps,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / trained_steps, 4) if trained_steps else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from is not None else None,
            "resumed_at_step": start,
            "processes": self.world,
            "process_index": self.rank,
            "device": str(self.device),
            "settings": {k: constants[k] if k in constants else getattr(opts, k) for k in RECORDED_SETTINGS},
            "trained": ["controlnet"]
            + (["unet"] if opts.train_unet else ["unet attention"] if opts.train_unet_attention else []),
            "ema": self.ema is not None,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "base": self.base,
            "data": self.data,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        }
        if accelerator.is_main_process:
            for module in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.controlnet):
                _place(module, module.device, torch.float32)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with quiet_warnings():
                pipe.save_pretrained(self.out_dir)
            (self.out_dir / TRAIN_RECORD).write_text(json.dumps(stats, indent=2) + "\n")
        accelerator.wait_for_everyone()
        stats["out_dir"] = str(self.out_dir)
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
    options: TrainOptions,
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
                pipe, examples, out_dir, step, options.validation_steps, VALIDATION_GUIDANCE
            )
    finally:
        for module, dtype in zip(parts, dtypes, strict=True):
            _place(module, module.device, dtype)
        if ema is not None:
            ema.swap_out()
        net.train(modes[0])
        body.train(modes[1])
        pipe.controlnet, pipe.unet = live_cn, live_unet
