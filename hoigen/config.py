"""Stage options and recipes: the one place where every default lives.

Each stage has an options dataclass; the CLI fills only what the user passed and recipes
(``recipes/*.yaml``) fill the rest, so a default is written once. A recipe is a YAML mapping with
``seed``, ``out`` and one section per stage; an unknown key is rejected with the closest valid one.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from hoigen.errors import HoigenError


def require_positive(options: object, *names: str) -> None:
    """Reject zero or negative counts with a one-line error naming the option."""
    for name in names:
        value = getattr(options, name)
        if value is not None and value < 1:
            raise HoigenError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


@dataclass
class Common:
    seed: int = 0
    workers: int = 1
    shard_index: int | None = None
    num_shards: int | None = None
    quiet: bool = False


@dataclass
class GraspOptions:
    objects: Path | None = None  # a folder of meshes; None -> the embedded procedural objects
    categories: list[str] | None = None  # procedural categories (None -> bottle, bowl, can, mug)
    category: str | None = None  # category for every mesh of --objects
    up: str | None = None  # the meshes' up axis (+x/-x/+y/-y/+z/-z); None: +z for YCB layouts, else +y
    grasps: int = 2  # grasps per object
    frames: int = 8  # frames of the approach trajectory (the paper uses 8)
    side: str = "right"
    mano_dir: Path | None = None
    objects_per_shard: int = 1
    approach_distance: float = 0.3  # metres from the grasp to the start pose (as the original code)
    max_penetration: float = 0.5  # cm: deepest hand vertex inside the object for an accepted grasp
    max_sim_displacement: float = 2.0  # cm: object displacement in the pybullet hold test
    min_contacts: int = 3  # fingers touching the object
    candidates: int | None = None  # optimised candidates per object and round (None: max(16, 3 x grasps))
    max_rounds: int = 3  # rounds of candidates per object while fewer than `grasps` are accepted

    def __post_init__(self) -> None:
        require_positive(self, "grasps", "frames", "objects_per_shard", "candidates", "max_rounds")
        if self.max_penetration < 0 or self.max_sim_displacement < 0 or not 0 <= self.min_contacts <= 5:
            raise HoigenError(
                "--max-penetration and --max-sim-displacement must be >= 0 and --min-contacts in 0..5"
            )
        if self.side not in ("right", "left"):
            raise HoigenError(f"--side must be right or left, got {self.side!r}")


@dataclass
class RenderOptions:
    views: int = 2  # cameras per trajectory (fixed along the trajectory)
    size: int | None = None  # None: 512 (square) for camera "random", the preset's native size (640x480) else
    supersample: int = 1
    camera: str = "random"  # random | nocs-camera | nocs-real275 | dexycb (hoigen.render.cameras.CAMERA_PRESETS)
    camera_tries: int = 10  # camera draws per trajectory view to get it all in view before skipping it

    def __post_init__(self) -> None:
        require_positive(self, "views", "size", "supersample", "camera_tries")
        from hoigen.render.cameras import CAMERA_CHOICES

        if self.camera not in CAMERA_CHOICES:
            raise HoigenError(f"--camera must be one of {', '.join(CAMERA_CHOICES)}, got {self.camera!r}")


@dataclass
class SynthOptions:
    prompts: Path | None = None
    model: str = "tiny-random"  # diffusers folder, hub id or single-file checkpoint (.safetensors/.ckpt)
    # ControlNets, repeatable: KIND=ID|DIR with KIND hoi | normal | pose | seg (a bare value = hoi);
    # several form a MultiControlNet; "none" = plain text-to-image on purpose (hoigen.diffusion.controls)
    controlnet: str | list[str] | None = None
    adapter: str | list[str] | None = None  # T2I-Adapters, repeatable: KIND=DIR, KIND pose | normal | seg
    adapter_scale: float | str = 1.0  # one weight for all adapters, or KIND=X,... (missing kinds 1)
    lora: str | list[str] | None = None  # LoRAs, repeatable: ID|DIR|FILE[:SCALE]
    model_config: str | None = None  # diffusers folder/hub id with the configs + tokenizer of a single-file --model
    control_start: float = 0.0  # fraction of the steps where the ControlNets start acting (control_guidance_start)
    control_end: float = 1.0  # ... and where they stop (control_guidance_end)
    init: str | None = None  # "shade": ControlNet img2img from the rendered shade.png
    strength: float = 0.8  # img2img strength with --init (1 = ignore the init image)
    save_conditions: bool = False  # write each map as fed (cond_<kind>.png) into the synth shards
    steps: int = 50  # DDIM 50 steps, guidance 7.5: the original release (pipeline.DEFAULT_STEPS)
    guidance: float = 7.5
    size: int | None = None  # None -> 512 for real models, 64 for the tiny stand-in
    negative_prompt: str | None = None
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU; or float32 | float16 | bfloat16
    scheduler: str = "ddim"  # ddim | unipc | dpm++ (hoigen.diffusion.schedulers)
    images_per_condition: int = 1
    condition_scales: str | None = None  # "normal=1,seg=1,skeleton=1" (hoigen.diffusion.conditions)
    control_scale: float | str = 1.0  # ControlNet residuals' weight: one number, or KIND=X,... per ControlNet
    blank_uncond: bool = False  # guidance's unconditional branch sees blank conditions (pipeline.generate)
    video: bool = False  # cross-frame attention to an anchor frame per trajectory; mp4s in OUT/videos
    anchor: str = "middle"  # the video anchor frame: middle | first | last | a frame number
    fps: int = 8
    compile: bool = False  # torch.compile the UNet (GPU; slow first batch)
    tiled_vae: bool = False  # decode big images tile by tile (less memory)

    def __post_init__(self) -> None:
        require_positive(self, "steps", "size", "batch_size", "images_per_condition", "fps")
        from hoigen.diffusion.schedulers import SCHEDULER_NAMES

        if self.scheduler not in SCHEDULER_NAMES:
            raise HoigenError(f"--scheduler must be one of {', '.join(SCHEDULER_NAMES)}, got {self.scheduler!r}")
        if self.condition_scales is not None:
            from hoigen.diffusion.conditions import parse_condition_scales

            parse_condition_scales(self.condition_scales)
        from hoigen.diffusion.controls import parse_controls, parse_loras, parse_scales

        controlnets, adapters = parse_controls(self.controlnet, self.adapter)
        kinds = [k for k, _ in adapters] or [k for k, _ in controlnets if k != "none"] or ["hoi"]
        parse_scales("--control-scale", self.control_scale, [] if adapters else kinds)
        parse_scales("--adapter-scale", self.adapter_scale, kinds if adapters else [])
        parse_loras(self.lora)
        if self.init not in (None, "shade"):
            raise HoigenError(f"--init must be shade (paint from the rendered shade.png), got {self.init!r}")
        if not 0.0 < float(self.strength) <= 1.0:
            raise HoigenError(f"--strength must lie in (0, 1], got {self.strength}")
        if not 0.0 <= float(self.control_start) < float(self.control_end) <= 1.0:
            raise HoigenError(
                f"--control-start/--control-end must satisfy 0 <= start < end <= 1, got {self.control_start}, "
                f"{self.control_end}"
            )
        if self.anchor not in ("middle", "first", "last") and not str(self.anchor).isdigit():
            raise HoigenError(f"--anchor must be middle, first, last or a frame number, got {self.anchor!r}")


@dataclass
class ExportOptions:
    format: str = "nocs"  # nocs | bop
    split: str = "train"
    val_fraction: float = 0.0  # share of (object, grasp) trajectories written to the val split instead
    mix: Path | None = None  # a real NOCS-layout dataset to mix with (writes mixed_<split>_list.txt)
    ratio: float = 0.5  # synthetic share of the mixed list
    mix_mode: str = "replace"  # replace: keep the real set's size; add: real images plus synthetic ones

    def __post_init__(self) -> None:
        if self.format not in ("nocs", "bop"):
            raise HoigenError(f"--format must be nocs or bop, got '{self.format}'")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise HoigenError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.mix is not None and self.format != "nocs":
            raise HoigenError("--mix writes NOCS list files; use it with --format nocs")
        if not self.split or "/" in self.split or self.split == "val" and self.val_fraction > 0:
            raise HoigenError(f"--split '{self.split}' is not a split name (no '/', not 'val' with --val-fraction)")


@dataclass
class TrainOptions:
    data: Path | None = None  # recipes only: the shards to train on (default: the recipe's last stage output)
    model: str = "tiny-random"  # base pipeline (a Stable Diffusion folder/hub id, a trained folder)
    controlnet: str | None = None  # start from this ControlNet (default: the model's, or one copied from the UNet)
    steps: int = 100
    lr: float = 1e-5  # the paper's learning rate (AdamW 1e-5 in the original code)
    batch_size: int = 4  # per process (the original code: 8 per GPU)
    size: int = 64  # training resolution (512 for Stable Diffusion 1.5; 64 suits the tiny stand-in)
    text_dropout: float = 0.1
    bg_dir: Path | None = None  # background buffer: a folder of scenery images
    bg_every: int = 10  # a background batch every N steps
    bg_weight: float = 1.0  # lambda of the paper's eq. (3); 0 = no background batches
    captions: Path | None = None  # key -> caption file (.json, .jsonl or key<TAB>caption)
    caption_hook: str | None = None  # module:function(image, ann) -> caption
    train_unet_attention: bool = False
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # no | fp16 | bf16
    use_8bit_adam: bool = False
    ema_decay: float = 0.0  # 0 = no EMA
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 500  # 0 = no checkpoints
    keep_checkpoints: int = 3
    resume: str = "auto"  # auto (latest checkpoint in --out, if any) | never | a checkpoint folder
    validate_every: int = 0  # 0 = no validation images
    validation_images: int = 4
    validation_steps: int = 20
    threads: int | None = None  # torch CPU threads (None: torch's default); 1 helps small CPU runs on a busy box

    def __post_init__(self) -> None:
        require_positive(self, "steps", "batch_size", "size", "bg_every", "validation_images", "validation_steps")
        require_positive(self, "threads")
        if not 0.0 <= float(self.text_dropout) <= 1.0:
            raise HoigenError(f"--text-dropout must lie in [0, 1], got {self.text_dropout}")
        if self.bg_weight < 0:
            raise HoigenError(f"--bg-weight must be >= 0, got {self.bg_weight}")


@dataclass
class Recipe:
    """A whole chain: ``hoigen run RECIPE`` runs every section present, in stage order."""

    seed: int = 0
    out: Path = Path("out")
    grasp: GraspOptions | None = None
    render: RenderOptions | None = None
    synthesize: SynthOptions | None = None
    export: ExportOptions | None = None
    train: TrainOptions | None = None
    workers: int = 1
    name: str = ""


SECTIONS = {
    "grasp": GraspOptions,
    "render": RenderOptions,
    "synthesize": SynthOptions,
    "export": ExportOptions,
    "train": TrainOptions,
}
PATH_FIELDS = {"objects", "mano_dir", "prompts", "bg_dir", "mix", "captions", "data"}


def _check_keys(given: dict[str, Any], valid: list[str], where: str) -> None:
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise HoigenError(f"{where}: unknown key '{key}'{hint}")


def build_options(cls: type, values: dict[str, Any], where: str, base: Path | None = None) -> Any:
    """Make ``cls`` from a mapping, rejecting unknown keys; relative paths resolve against ``base``."""
    _check_keys(values, [f.name for f in fields(cls)], where)
    kwargs = {}
    for key, value in values.items():
        if key in PATH_FIELDS and value is not None:
            value = Path(value)
            if base is not None and not value.is_absolute():
                value = base / value
        if key == "categories" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        kwargs[key] = value
    return cls(**kwargs)


def load_recipe(path: Path) -> Recipe:
    """Read a recipe YAML; paths inside it are relative to the current directory."""
    path = Path(path)
    if not path.exists():
        raise HoigenError(f"{path}: recipe not found; see recipes/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HoigenError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise HoigenError(f"{path}: a recipe must be a mapping of sections")
    top = ["seed", "out", "workers", "name", *SECTIONS]
    _check_keys(data, top, str(path))
    recipe = Recipe(
        seed=int(data.get("seed", 0)),
        out=Path(data.get("out", "out")),
        workers=int(data.get("workers", 1)),
        name=str(data.get("name", path.stem)),
    )
    for section, cls in SECTIONS.items():
        if section in data:
            setattr(recipe, section, build_options(cls, data[section] or {}, f"{path} [{section}]"))
    return recipe


def to_config(*options: Any) -> dict[str, Any]:
    """Options as a JSON-able dict for ``run.json``."""
    out: dict[str, Any] = {}
    for opt in options:
        out.update({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opt).items()})
    return out
