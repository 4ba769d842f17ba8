"""The synthesize and train options (declared once: CLI flags, recipe keys and the stages read these fields).

This module imports no diffusers or torch: the CLI and recipes read it to parse and check options.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from hoigen.errors import HoigenError
from hoigen.options import MAX_SYNTH_SIZE, REAL_SIZE, TINY_SIZE, OptionError, option, validate

SCHEDULER_NAMES = ("ddim", "unipc", "dpm++")  # hoigen.diffusion.schedulers.make_scheduler builds each
TINY_MODEL = "tiny-random"  # the offline stand-in pipeline (hoigen.diffusion.tiny)


@dataclass(frozen=True)
class SynthOptions:
    prompts: Path | None = option(
        None, "Prompt file: one per line, # comments, {object} and {background} placeholders."
    )
    model: str = option(
        TINY_MODEL, "Diffusers folder or hub id of the base model.", default_text="tiny-random, an offline stand-in"
    )
    controlnet: str | None = option(None, "Folder or hub id of the HOI ControlNet.")
    steps: int = option(50, "Denoising steps (DDIM 50 and guidance 7.5: the original release).", min=1)
    guidance: float = option(7.5, "Classifier-free guidance scale.")
    size: int | None = option(
        None, "Image size.", min=1, max=MAX_SYNTH_SIZE, default_text=f"{REAL_SIZE}, {TINY_SIZE} for tiny-random"
    )
    negative_prompt: str | None = option(None, "Negative prompt.")
    batch_size: int = option(4, "Images per diffusion batch.", min=1)
    device: str = option("auto", "cpu, cuda or auto.")
    dtype: str = option(
        "auto", "Weights' precision: auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16."
    )
    scheduler: str = option("ddim", "Sampler: ddim, unipc or dpm++ (DPM-Solver++).", choices=SCHEDULER_NAMES)
    images_per_condition: int = option(
        1, "Images per rendered sample (image.jpg, image_1.jpg, ...), each with its own prompt and seed.", min=1
    )
    condition_scales: str | None = option(
        None,
        "Weights of the condition maps, e.g. normal=1,seg=0.5,skeleton=1 (0 blanks a map).",
        default_text="all 1",
    )
    control_scale: float = option(1.0, "Weight of the ControlNet's output (controlnet_conditioning_scale).")
    blank_uncond: bool = option(
        False,
        "Classifier-free guidance's unconditional branch sees blank conditions (the paper's pairing), so guidance "
        "also pushes toward the geometry (off: both branches see the conditions).",
    )
    video: bool = option(
        False,
        "Paint each trajectory (same object, grasp, view) as one clip with attention to an anchor frame; also "
        "writes OUT/videos/<object>_<grasp>_<view>.mp4 and its frames.",
    )
    anchor: str = option("middle", "Video anchor frame: middle, first, last or a frame number.")
    fps: int = option(8, "Frame rate of the mp4s.", min=1)
    compile: bool = option(False, "torch.compile the UNet (CUDA; slow first batch).")
    tiled_vae: bool = option(False, "Decode big images tile by tile (less GPU memory).")

    def __post_init__(self) -> None:
        validate(self)
        if self.condition_scales is not None:
            from hoigen.diffusion.conditions import parse_condition_scales

            try:
                parse_condition_scales(self.condition_scales)
            except HoigenError as exc:
                raise OptionError("condition_scales", str(exc).removeprefix("--condition-scales: ")) from None
        if self.anchor not in ("middle", "first", "last") and not self.anchor.isdigit():
            raise OptionError("anchor", f"must be middle, first, last or a frame number, got {self.anchor!r}")

    def image_size(self) -> int:
        """The image size: as given, else 64 for the tiny stand-in and 512 for real weights."""
        if self.size:
            return self.size
        return TINY_SIZE if self.model in ("", TINY_MODEL) else REAL_SIZE

    def resolved(self) -> SynthOptions:
        """These options with the image size filled in (what the stage and run.json see)."""
        return replace(self, size=self.image_size())


@dataclass(frozen=True)
class TrainOptions:
    data: Path | None = option(
        None, "The shards to train on (recipes only; default: the recipe's last stage output).", cli=False
    )
    model: str = option(TINY_MODEL, "Base pipeline to fine-tune (a Stable Diffusion folder/hub id, a trained folder).")
    controlnet: str | None = option(
        None, "Start from this ControlNet (folder or hub id).", default_text="the model's, or one copied from the UNet"
    )
    steps: int = option(100, "Optimisation steps.", min=1)
    lr: float = option(1e-5, "Learning rate (the paper's: AdamW 1e-5 in the original code).")
    batch_size: int = option(4, "Batch size per process (the original code: 8 per GPU).", min=1)
    size: int = option(TINY_SIZE, "Training resolution (512 for Stable Diffusion 1.5; 64 suits the tiny stand-in).",
                       min=1, max=MAX_SYNTH_SIZE)  # fmt: skip
    text_dropout: float = option(0.1, "Prompt dropout for classifier-free guidance.", min=0, max=1)
    bg_dir: Path | None = option(None, "Background buffer: a folder of scenery images.")
    bg_every: int = option(10, "A background batch every N steps.", min=1)
    bg_weight: float = option(1.0, "Background regularisation weight (lambda of the paper's eq. 3; 0: none).", min=0)
    captions: Path | None = option(None, "Captions file: .json {key: caption}, .jsonl, or key<TAB>caption lines.")
    caption_hook: str | None = option(
        None,
        "module:function(image, ann) -> caption, for samples without one. This runs your Python code in "
        "hoigen's process (the only input that is code, not data); name only modules you would run yourself.",
    )
    train_unet_attention: bool = option(False, "Also train the UNet's attention layers.")
    gradient_checkpointing: bool = option(False, "Trade compute for memory.")
    mixed_precision: str = option("no", "no, fp16 or bf16.")
    use_8bit_adam: bool = option(False, "8-bit AdamW (needs bitsandbytes).", flag="--use-8bit-adam/--no-8bit-adam")
    ema_decay: float = option(0.0, "Keep an EMA of the weights (e.g. 0.9999); 0 = off.")
    lr_scheduler: str = option("constant", "constant, constant_with_warmup, linear, cosine, ...")
    lr_warmup_steps: int = option(0, "Warm-up steps.")
    max_grad_norm: float = option(1.0, "Gradient clipping (0 = off).")
    checkpoint_every: int = option(500, "Save a resumable checkpoint every N steps (0 = never).")
    keep_checkpoints: int = option(3, "Newest checkpoints kept.")
    resume: str = option("auto", "auto (latest checkpoint in --out, if any), never, or a checkpoint folder.")
    validate_every: int = option(0, "Write OUT/validation/step-N.png every N steps (0 = never).")
    validation_images: int = option(4, "Fixed validation conditions.", min=1)
    validation_steps: int = option(20, "Validation denoising steps.", min=1)
    threads: int | None = option(
        None, "torch CPU threads; 1 helps small CPU runs on a busy box.", min=1, default_text="torch's choice"
    )

    def __post_init__(self) -> None:
        validate(self)
