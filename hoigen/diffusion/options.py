"""The synthesize and train options (declared once: CLI flags, recipe keys and the stages read these fields).

This module imports no diffusers or torch: the CLI and recipes read it to parse and check options.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from hoigen.errors import HoigenError
from hoigen.geometry import CROP_MODES
from hoigen.options import MAX_SYNTH_SIZE, REAL_SIZE, TINY_SIZE, OptionError, flag_of, option, validate

SCHEDULER_NAMES = ("ddim", "unipc", "dpm++")  # hoigen.diffusion.schedulers.make_scheduler builds each
TINY_MODEL = "tiny-random"  # the offline stand-in pipeline (hoigen.diffusion.tiny)
TINY_TRAINED_MODEL = "tiny-trained"  # the stand-in with shipped weights trained on hoigen renders
TINY_MODELS = ("", TINY_MODEL, TINY_TRAINED_MODEL)  # the models painting at TINY_SIZE by default


def default_image_size(model: str) -> int:
    """The image size when none is given: 64 for the tiny stand-ins, 512 for real weights."""
    return TINY_SIZE if model in TINY_MODELS else REAL_SIZE
# Background regularisation (hoigen.diffusion.train): "swap" is the original code's, the default because
# it is what trained the published checkpoints and costs nothing extra (a scenery step replaces an HOI
# step: same compute and memory per step, whereas "loss" runs two batches through one backward pass
# on its background steps, doubling their activation memory); "loss" is the paper's eq. 3 form.
BG_MODES = ("swap", "loss")
DEFAULT_BG_PROB = 0.1  # the original code's reg_prob
DEFAULT_BG_EVERY = 10
DEFAULT_BG_WEIGHT = 1.0  # the paper's lambda


@contextmanager
def _as_option_error(*names: str) -> Iterator[None]:
    """A parser's ``--flag ...`` HoigenError as the OptionError of the field it names (exit 2)."""
    try:
        yield
    except OptionError:
        raise
    except HoigenError as exc:
        text = str(exc)
        for name in names:
            flag = flag_of(name)
            if text == flag or text.startswith((flag + " ", flag + ":")):
                raise OptionError(name, text.removeprefix(flag).removeprefix(":").strip()) from None
        raise OptionError(names[0], text) from None


@dataclass(frozen=True)
class SynthOptions:
    prompts: Path | None = option(
        None, "Prompt file: one per line, # comments, {object} and {background} placeholders."
    )
    model: str = option(
        TINY_MODEL,
        "Base model: a diffusers folder, a hub id, or a single-file .safetensors/.ckpt (see --model-config).",
        default_text="tiny-random, an offline stand-in",
    )
    model_config: str | None = option(
        None, "Diffusers SD folder or hub id giving a single-file --model (.safetensors/.ckpt) its configs/tokenizer."
    )
    controlnet: list[str] = option(
        [],
        "ControlNet, repeatable: KIND=ID|DIR with KIND hoi, normal, pose or seg (a bare ID|DIR is the HOI "
        "ControlNet from hoigen train); several form a MultiControlNet; 'none' = plain text-to-image on purpose.",
    )
    adapter: list[str] = option(
        [], "T2I-Adapter, repeatable: KIND=DIR, KIND pose, normal or seg (see hoigen convert hoidiffusion)."
    )
    lora: list[str] = option([], "LoRA, repeatable: ID|DIR|FILE[:SCALE].")
    steps: int = option(50, "Denoising steps (DDIM 50 and guidance 7.5: the original release).", min=1)
    guidance: float = option(7.5, "Classifier-free guidance scale.")
    size: int | None = option(
        None, "Image size.", min=1, max=MAX_SYNTH_SIZE, default_text=f"{REAL_SIZE}, {TINY_SIZE} for the tiny models"
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
    control_scale: str = option(
        "1", "ControlNet output weights (controlnet_conditioning_scale): one number, or KIND=X,... (missing kinds 1)."
    )
    control_start: float = option(0.0, "Fraction of the steps before the ControlNets act.", min=0, max=1)
    control_end: float = option(1.0, "Fraction of the steps after which the ControlNets stop.", min=0, max=1)
    adapter_scale: str = option("1", "Adapter weights: one number, or KIND=X,... (missing kinds 1).")
    init: str | None = option(None, "shade: ControlNet img2img from the rendered shade.png.")
    strength: float = option(0.8, "img2img strength with --init (1 = ignore the init image).", min=0, max=1)
    save_conditions: bool = option(False, "Write each map as fed (cond_<kind>.png) into the shards.")
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
    min_pck: float | None = option(
        None,
        "Filter: a hand detector checks each painted image against its labels; an image whose PCK@--pck-at is "
        "below this is repainted with the next derived seed (up to --max-tries), and a sample whose image never "
        "agrees is dropped (docs/guides/evaluate.md, Filtering).",
        min=0,
        max=1,
        default_text="off",
    )
    pck_at: float = option(0.2, "The PCK --min-pck reads: 0.05, 0.1 or 0.2 of the labelled hand box diagonal.")
    max_tries: int = option(3, "Paintings per image under --min-pck (the first is the unfiltered image).", min=1)
    filter_detector: str = option(
        "mediapipe",
        "Hand detector for --min-pck: mediapipe (MediaPipe Hands), or module:factory, a callable returning "
        "image -> detections (this runs your Python code, like --caption-hook).",
    )

    def __post_init__(self) -> None:
        validate(self)
        self._check_filter()
        if self.condition_scales is not None:
            from hoigen.diffusion.conditions import parse_condition_scales

            try:
                parse_condition_scales(self.condition_scales)
            except HoigenError as exc:
                raise OptionError("condition_scales", str(exc).removeprefix("--condition-scales: ")) from None
        self._check_weights()
        if self.anchor not in ("middle", "first", "last") and not self.anchor.isdigit():
            raise OptionError("anchor", f"must be middle, first, last or a frame number, got {self.anchor!r}")

    def _check_weights(self) -> None:
        """The ControlNet / adapter / LoRA values parse (hoigen.diffusion.controls), init and the step window."""
        from hoigen.diffusion.controls import parse_controls, parse_loras, parse_scales

        with _as_option_error("controlnet", "adapter"):
            controlnets, adapters = parse_controls(self.controlnet, self.adapter)
        kinds = [k for k, _ in adapters] or [k for k, _ in controlnets if k != "none"] or ["hoi"]
        with _as_option_error("control_scale"):
            parse_scales("--control-scale", self.control_scale, [] if adapters else kinds)
        with _as_option_error("adapter_scale"):
            parse_scales("--adapter-scale", self.adapter_scale, kinds if adapters else [])
        parse_loras(self.lora)
        if self.init not in (None, "shade"):
            raise OptionError("init", f"must be shade (paint from the rendered shade.png), got {self.init!r}")
        if self.strength <= 0:
            raise OptionError("strength", f"must lie in (0, 1], got {self.strength}")
        if self.control_start >= self.control_end:
            raise OptionError(
                "control_start",
                f"must lie below --control-end (--control-start/--control-end: 0 <= start < end <= 1), got "
                f"{self.control_start} and {self.control_end}",
            )

    def _check_filter(self) -> None:
        """--pck-at names a measured PCK; --min-pck paints stills (a clip's frames share one seed)."""
        from hoigen.imgeval.agreement import PCK_THRESHOLDS

        if self.pck_at not in PCK_THRESHOLDS:
            named = ", ".join(f"{t:g}" for t in PCK_THRESHOLDS)
            raise OptionError("pck_at", f"must be one of {named}, got {self.pck_at:g}")
        if self.min_pck is not None and self.video:
            raise OptionError("min_pck", "filters still images; leave out --video (a clip's frames share one seed)")

    def image_size(self) -> int:
        """The image size: as given, else ``default_image_size(model)``."""
        return self.size or default_image_size(self.model)

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
    size: int = option(TINY_SIZE, "Training resolution (512 for Stable Diffusion 1.5; 64 suits the tiny models).",
                       min=1, max=MAX_SYNTH_SIZE)  # fmt: skip
    text_dropout: float = option(
        0.0,
        "Prompt dropout (a prompt becomes \"\" with this probability, for classifier-free guidance). The original "
        "code defines it but never uses it, so none by default; the base model keeps its unconditional branch.",
        min=0,
        max=1,
    )
    bg_dir: Path | None = option(
        None, "Background buffer: a folder of scenery images with captions.txt (hoigen backgrounds writes one)."
    )
    bg_mode: str = option(
        "swap",
        "Background regularisation: swap (the original code: with probability --bg-prob a step trains on a whole "
        "batch of scenery with blank conditions and its captions, no HOI loss that step) or loss (the paper's eq. 3: "
        "every --bg-every steps --bg-weight x a scenery batch's loss is added).",
        choices=BG_MODES,
    )
    bg_prob: float | None = option(
        None, "--bg-mode swap: probability that a step is a scenery step.", min=0, max=1,
        default_text=f"{DEFAULT_BG_PROB} (swap mode only)",
    )  # fmt: skip
    bg_every: int | None = option(
        None, "--bg-mode loss: a background batch every N steps.", min=1,
        default_text=f"{DEFAULT_BG_EVERY} (loss mode only)",
    )  # fmt: skip
    bg_weight: float | None = option(
        None, "--bg-mode loss: weight of the background loss (lambda of the paper's eq. 3; 0: none).", min=0,
        default_text=f"{DEFAULT_BG_WEIGHT} (loss mode only)",
    )  # fmt: skip
    crop: str = option(
        "none",
        "hoi: crop each training example to the square around the hand and object (seg.png's box + 10%, padded) "
        "before scaling to --size, as the original code does; none: the whole image.",
        choices=CROP_MODES,
    )
    captions: Path | None = option(None, "Captions file: .json {key: caption}, .jsonl, or key<TAB>caption lines.")
    caption_hook: str | None = option(
        None,
        "module:function(image, ann) -> caption, for samples without one. This runs your Python code in "
        "hoigen's process (the only input that is code, not data); name only modules you would run yourself.",
    )
    train_unet_attention: bool = option(False, "Also train the UNet's attention layers.")
    train_unet: bool = option(
        False, "Also train the whole UNet, for models trained from scratch such as tiny-trained."
    )
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
        other = {"swap": ("bg_every", "bg_weight"), "loss": ("bg_prob",)}[self.bg_mode]
        for name in other:
            if getattr(self, name) is not None:
                mode = "loss" if self.bg_mode == "swap" else "swap"
                instead = "--bg-prob" if self.bg_mode == "swap" else "--bg-every/--bg-weight"
                raise OptionError(
                    name, f"applies to --bg-mode {mode} only (--bg-mode {self.bg_mode} uses {instead}); "
                    f"pass --bg-mode {mode} or drop it",
                )  # fmt: skip
        if self.bg_prob is not None and self.bg_prob >= 1:
            raise OptionError("bg_prob", f"must be below 1 (1 never trains on the HOI data), got {self.bg_prob}")

    @property
    def swap_prob(self) -> float:
        """The probability of a scenery step (0 unless ``bg_mode`` is swap)."""
        if self.bg_mode != "swap":
            return 0.0
        return DEFAULT_BG_PROB if self.bg_prob is None else self.bg_prob

    @property
    def loss_every(self) -> int:
        """Steps between background batches in loss mode (0 unless ``bg_mode`` is loss)."""
        if self.bg_mode != "loss":
            return 0
        return DEFAULT_BG_EVERY if self.bg_every is None else self.bg_every

    @property
    def loss_weight(self) -> float:
        """The background loss weight in loss mode (0 unless ``bg_mode`` is loss)."""
        if self.bg_mode != "loss":
            return 0.0
        return DEFAULT_BG_WEIGHT if self.bg_weight is None else self.bg_weight

    @property
    def uses_background(self) -> bool:
        """Whether scenery batches are ever drawn (swap with a probability > 0, or loss with a weight > 0)."""
        return self.swap_prob > 0 or self.loss_weight > 0


@dataclass(frozen=True)
class BackgroundOptions:
    """``hoigen backgrounds``: the background buffer (scenery images + captions) painted by the base model."""

    prompts: Path | None = option(
        None, "Scenery prompts, one per line (# comments), e.g. written by an LLM as in the paper.",
        default_text="required",
    )  # fmt: skip
    model: str = option(
        TINY_MODEL,
        "Base text-to-image model: a diffusers Stable Diffusion folder, a hub id, or a single-file .safetensors/.ckpt.",
        default_text="tiny-random, an offline stand-in",
    )
    model_config: str | None = option(None, "Diffusers SD folder or hub id giving a single-file --model its configs.")
    images_per_prompt: int = option(1, "Images per prompt, each with its own seed.", min=1)
    steps: int = option(50, "Denoising steps.", min=1)
    guidance: float = option(7.5, "Classifier-free guidance scale.")
    size: int | None = option(None, "Image size.", min=8, default_text=f"{REAL_SIZE}, {TINY_SIZE} for the tiny models")
    negative_prompt: str | None = option(None, "Negative prompt.")
    batch_size: int = option(4, "Images per diffusion batch.", min=1)
    device: str = option("auto", "cpu, cuda or auto.")
    dtype: str = option("auto", "auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16.")
    scheduler: str = option("ddim", "Sampler: ddim, unipc or dpm++.", choices=SCHEDULER_NAMES)

    def __post_init__(self) -> None:
        validate(self)

    def image_size(self) -> int:
        """The image size: as given, else ``default_image_size(model)``."""
        return self.size or default_image_size(self.model)
