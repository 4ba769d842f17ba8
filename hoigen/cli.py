"""The ``hoigen`` command line: thin wrappers that parse options and call :mod:`hoigen.stages`."""

from __future__ import annotations

import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from hoigen import __version__
from hoigen.config import (
    Common,
    ExportOptions,
    GraspOptions,
    RenderOptions,
    SynthOptions,
    TrainOptions,
    build_options,
)
from hoigen.data.progress import info
from hoigen.errors import HoigenError

app = typer.Typer(
    name="hoigen",
    help="A command-line factory for synthetic 3D hand-object interaction data.\n\n"
    "Each stage reads the shards of the stage before and writes WebDataset shards "
    "(shard-%06d.tar) with index.parquet and run.json:\n\n"
    "grasp -> render -> synthesize -> export   (train fine-tunes the diffusion model).\n\n"
    "Quick start: hoigen run recipes/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
assets_app = typer.Typer(
    help="Build (build-hand) or picture (show) the embedded hand and objects shipped with hoigen.", no_args_is_help=True
)
app.add_typer(assets_app, name="assets")
ingest_app = typer.Typer(help="Read real datasets into hoigen shards (for hoigen train).", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
convert_app = typer.Typer(help="Convert released model checkpoints into diffusers folders.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")
eval_app = typer.Typer(help="Evaluate predictions against exported ground truth.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

# Options shared by every stage ------------------------------------------------------------------
SEED = typer.Option(0, "--seed", help="Run seed; every sample's seed derives from it and the sample key.")
WORKERS = typer.Option(1, "--workers", help="Local worker processes (shards are split between them).")
SHARD_INDEX = typer.Option(None, "--shard-index", help="This process's rank (default: RANK or SLURM_ARRAY_TASK_ID).")
NUM_SHARDS = typer.Option(None, "--num-shards", help="Number of ranks (default: WORLD_SIZE or SLURM_ARRAY_TASK_COUNT).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines.")


def _common(seed: int, workers: int, shard_index: int | None, num_shards: int | None, quiet: bool) -> Common:
    return Common(seed=seed, workers=workers, shard_index=shard_index, num_shards=num_shards, quiet=quiet)


def _options(cls: type, **given: Any) -> Any:
    """Options from what the user passed (None = not passed, so the dataclass default applies)."""
    return build_options(cls, {k: v for k, v in given.items() if v is not None}, "options")


def _default(cls: type, name: str) -> str:
    """`` [default: X]`` read from the options dataclass, so help never drifts from the code."""
    return f" [default: {next(f.default for f in fields(cls) if f.name == name)}]"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hoigen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """hoigen: synthetic 3D hand-object interaction data."""


@app.command()
def grasp(
    objects: Path | None = typer.Option(
        None,
        "--objects",
        help="Folder of meshes (.obj/.ply/.glb/.stl, YCB layout). Default: the embedded procedural objects.",
    ),
    categories: str | None = typer.Option(None, "--categories", help="Procedural categories, e.g. mug,bowl."),
    category: str | None = typer.Option(None, "--category", help="Category for every mesh in --objects."),
    up: str | None = typer.Option(
        None, "--up", help="Up axis of the --objects meshes (+x/-x/+y/-y/+z/-z). Default: +z for YCB, else +y."
    ),
    out: Path = typer.Option(Path("out/grasp"), "--out", help="Output folder."),
    grasps: int | None = typer.Option(None, "--grasps", help="Grasps per object." + _default(GraspOptions, "grasps")),
    frames: int | None = typer.Option(
        None, "--frames", help="Frames of each approach trajectory." + _default(GraspOptions, "frames")
    ),
    side: str | None = typer.Option(None, "--side", help="right or left." + _default(GraspOptions, "side")),
    mano_dir: Path | None = typer.Option(
        None,
        "--mano-dir",
        envvar="HOIGEN_MANO_DIR",
        help="Folder with MANO_RIGHT.pkl/MANO_LEFT.pkl (default: embedded hand).",
    ),
    max_penetration: float | None = typer.Option(
        None, "--max-penetration", help="Accept grasps whose deepest hand vertex is at most this deep (cm)."
        + _default(GraspOptions, "max_penetration"),
    ),
    max_sim_displacement: float | None = typer.Option(
        None, "--max-sim-displacement", help="Accept grasps whose object moves at most this far in the "
        "pybullet hold test (cm)." + _default(GraspOptions, "max_sim_displacement"),
    ),
    min_contacts: int | None = typer.Option(
        None, "--min-contacts", help="Accept grasps with at least this many fingers touching."
        + _default(GraspOptions, "min_contacts"),
    ),
    candidates: int | None = typer.Option(
        None, "--candidates", help="Optimised grasp candidates per object and round [default: max(16, 3 x grasps)]."
    ),
    max_rounds: int | None = typer.Option(
        None, "--max-rounds", help="Rounds of candidates per object while fewer than --grasps pass the filters."
        + _default(GraspOptions, "max_rounds"),
    ),
    report: bool = typer.Option(False, "--report", help="Print metric tables per object and category (stderr)."),
    seed: int = SEED,
    workers: int = WORKERS,
    shard_index: int | None = SHARD_INDEX,
    num_shards: int | None = NUM_SHARDS,
    quiet: bool = QUIET,
) -> None:
    """Synthesize MANO grasps and approach trajectories for each object.

    Reads meshes (or makes procedural ones); writes one sample per trajectory frame
    (key object_grasp_frame) with MANO parameters, 3D joints, object pose and grasp metrics in
    ann.json, plus objects/<id>.ply and objects.parquet.

    Grasps are optimised in batches per object and only those that pass the filters
    (--max-penetration, --max-sim-displacement, --min-contacts) are written; while an object has
    fewer than --grasps, another batch is drawn (up to --max-rounds). The counts of rejected
    candidates and any shortfall go to run.json, and --report prints the metric tables.

    Example: hoigen grasp --objects ycb/ --grasps 4 --frames 8 --out out/grasp --report
    """
    from hoigen import stages

    opts = _options(
        GraspOptions,
        objects=objects,
        categories=categories,
        category=category,
        up=up,
        grasps=grasps,
        frames=frames,
        side=side,
        mano_dir=mano_dir,
        max_penetration=max_penetration,
        max_sim_displacement=max_sim_displacement,
        min_contacts=min_contacts,
        candidates=candidates,
        max_rounds=max_rounds,
    )
    _finish(stages.grasp(opts, out, _common(seed, workers, shard_index, num_shards, quiet)), quiet)
    if report:
        from hoigen.grasp.report import print_report

        print_report(out)


@app.command()
def render(
    in_dir: Path = typer.Option(Path("out/grasp"), "--in", help="Grasp output folder."),
    out: Path = typer.Option(Path("out/render"), "--out", help="Output folder."),
    views: int | None = typer.Option(
        None, "--views", help="Cameras per trajectory, fixed along it." + _default(RenderOptions, "views")
    ),
    size: int | None = typer.Option(
        None,
        "--size",
        help="Square image side S in pixels. Not given: 512 with --camera random, the preset's native "
        "size (640x480) with a preset; with a preset, S centre-crops the native frame to a square and "
        "scales it (K follows).",
    ),
    supersample: int | None = typer.Option(
        None,
        "--supersample",
        help="Render N times larger and area-average the normal and shade maps."
        + _default(RenderOptions, "supersample"),
    ),
    camera: str | None = typer.Option(
        None,
        "--camera",
        help="Intrinsics: random (fov 45-55 deg), nocs-camera, nocs-real275 or dexycb (real cameras' K)."
        + _default(RenderOptions, "camera"),
    ),
    camera_tries: int | None = typer.Option(
        None,
        "--camera-tries",
        help="Camera draws per trajectory view to get every frame in view; a view seeing nothing is then "
        "skipped with a logged reason." + _default(RenderOptions, "camera_tries"),
    ),
    seed: int = SEED,
    workers: int = WORKERS,
    shard_index: int | None = SHARD_INDEX,
    num_shards: int | None = NUM_SHARDS,
    quiet: bool = QUIET,
) -> None:
    """Render condition maps and annotations from sampled cameras.

    Reads grasp shards; writes one sample per frame and view (key object_grasp_frame_view) with
    normal.png, seg.png, skeleton.png (conditions), depth.png (uint16 mm), nocs.png, shade.png,
    amodal.png (bit 0 hand, bit 1 object) and the camera, 2D joints, visibility and boxes in ann.json.

    Example: hoigen render --in out/grasp --views 4 --size 512 --out out/render
    """
    from hoigen import stages

    opts = _options(
        RenderOptions, views=views, size=size, supersample=supersample, camera=camera, camera_tries=camera_tries
    )
    _finish(stages.render(in_dir, out, opts, _common(seed, workers, shard_index, num_shards, quiet)), quiet)


@app.command()
def synthesize(
    in_dir: Path | None = typer.Option(
        None,
        "--in",
        help="Render output folder. Without it, grasp and render run "
        "first into OUT/work from --objects (or the embedded objects).",
    ),
    objects: Path | None = typer.Option(None, "--objects", help="Mesh folder to grasp and render first."),
    out: Path = typer.Option(Path("out/synth"), "--out", help="Output folder."),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Prompt file: one per line, # comments, {object} and {background} placeholders."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Diffusers folder or hub id of the base model [default: tiny-random, an offline stand-in].",
    ),
    controlnet: list[str] | None = typer.Option(
        None,
        "--controlnet",
        help="ControlNet, repeatable: KIND=ID|DIR with KIND hoi, normal, pose or seg (a bare ID|DIR is the HOI "
        "ControlNet from hoigen train); several form a MultiControlNet; 'none' = plain text-to-image on purpose.",
    ),
    adapter: list[str] | None = typer.Option(
        None, "--adapter", help="T2I-Adapter, repeatable: KIND=DIR, KIND pose, normal or seg (see hoigen convert)."
    ),
    adapter_scale: str | None = typer.Option(
        None, "--adapter-scale", help="Adapter weights: one number, or KIND=X,... [default: 1]."
    ),
    lora: list[str] | None = typer.Option(None, "--lora", help="LoRA, repeatable: ID|DIR|FILE[:SCALE]."),
    model_config: str | None = typer.Option(
        None, "--model-config", help="Diffusers SD folder or hub id giving a single-file --model its configs/tokenizer."
    ),
    control_start: float | None = typer.Option(
        None, "--control-start", help="Fraction of steps before the ControlNets act [default: 0]."
    ),
    control_end: float | None = typer.Option(
        None, "--control-end", help="Fraction of steps after which the ControlNets stop [default: 1]."
    ),
    init: str | None = typer.Option(None, "--init", help="shade: ControlNet img2img from the rendered shade.png."),
    strength: float | None = typer.Option(
        None, "--strength", help="img2img strength with --init." + _default(SynthOptions, "strength")
    ),
    save_conditions: bool | None = typer.Option(
        None, "--save-conditions/--no-save-conditions", help="Write each map as fed (cond_<kind>.png) into the shards."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps." + _default(SynthOptions, "steps")),
    guidance: float | None = typer.Option(
        None, "--guidance", help="Classifier-free guidance scale." + _default(SynthOptions, "guidance")
    ),
    size: int | None = typer.Option(None, "--size", help="Image size [default: 512, 64 for tiny-random]."),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt", help="Negative prompt."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Images per diffusion batch." + _default(SynthOptions, "batch_size")
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or auto." + _default(SynthOptions, "device")),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="Weights' precision: auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16."
        + _default(SynthOptions, "dtype"),
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Sampler: ddim, unipc or dpm++ (DPM-Solver++)." + _default(SynthOptions, "scheduler")
    ),
    images_per_condition: int | None = typer.Option(
        None,
        "--images-per-condition",
        help="Images per rendered sample (image.jpg, image_1.jpg, ...), each with its own prompt and seed."
        + _default(SynthOptions, "images_per_condition"),
    ),
    condition_scales: str | None = typer.Option(
        None,
        "--condition-scales",
        help="Weights of the condition maps, e.g. normal=1,seg=0.5,skeleton=1 (0 blanks a map) [default: all 1].",
    ),
    control_scale: str | None = typer.Option(
        None,
        "--control-scale",
        help="ControlNet output weights: one number, or KIND=X,..." + _default(SynthOptions, "control_scale"),
    ),
    blank_uncond: bool | None = typer.Option(
        None,
        "--blank-uncond/--no-blank-uncond",
        help="Classifier-free guidance's unconditional branch sees blank conditions (the paper's pairing), "
        "so guidance also pushes toward the geometry [default: off: both branches see the conditions].",
    ),
    video: bool | None = typer.Option(
        None,
        "--video/--no-video",
        help="Paint each trajectory (same object, grasp, view) as one clip with attention to an anchor "
        "frame; also writes OUT/videos/<object>_<grasp>_<view>.mp4 and its frames.",
    ),
    anchor: str | None = typer.Option(
        None,
        "--anchor",
        help="Video anchor frame: middle, first, last or a frame number." + _default(SynthOptions, "anchor"),
    ),
    fps: int | None = typer.Option(None, "--fps", help="Frame rate of the mp4s." + _default(SynthOptions, "fps")),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the UNet (CUDA; slow first batch)."
    ),
    tiled_vae: bool | None = typer.Option(
        None, "--tiled-vae/--no-tiled-vae", help="Decode big images tile by tile (less GPU memory)."
    ),
    seed: int = SEED,
    workers: int = WORKERS,
    shard_index: int | None = SHARD_INDEX,
    num_shards: int | None = NUM_SHARDS,
    quiet: bool = QUIET,
) -> None:
    """Paint images on the rendered conditions with the HOI diffusion model.

    Reads render shards; writes them again with image.jpg, prompt.txt and gen.json (model, seed,
    steps, guidance, scheduler, scales). The conditions (normal + segmentation + skeleton) enter one
    ControlNet as a 9-channel map, or public ControlNets / HOIDiffusion's adapters each get their own
    map in their convention (--controlnet KIND=..., --adapter KIND=...; docs/guides/real-weights.md).
    A real --model with neither is refused (--controlnet none: plain text-to-image on purpose).
    --model and --controlnet take a local diffusers folder or a hub id (looked up in the Hugging Face
    cache first; the hub is asked only when reachable); --model also takes a .safetensors/.ckpt file.

    Example: hoigen synthesize --objects ycb/ --prompts prompts.txt --out out/synth
    """
    from hoigen import stages

    common = _common(seed, workers, shard_index, num_shards, quiet)
    opts = _options(
        SynthOptions,
        prompts=prompts,
        model=model,
        controlnet=controlnet or None,
        adapter=adapter or None,
        adapter_scale=adapter_scale,
        lora=lora or None,
        model_config=model_config,
        control_start=control_start,
        control_end=control_end,
        init=init,
        strength=strength,
        save_conditions=save_conditions,
        steps=steps,
        guidance=guidance,
        size=size,
        negative_prompt=negative_prompt,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        scheduler=scheduler,
        images_per_condition=images_per_condition,
        condition_scales=condition_scales,
        control_scale=control_scale,
        blank_uncond=blank_uncond,
        video=video,
        anchor=anchor,
        fps=fps,
        compile=compile,
        tiled_vae=tiled_vae,
    )
    if in_dir is None:
        in_dir = stages.prepare_conditions(_options(GraspOptions, objects=objects), opts, out / "work", common)
    elif objects is not None:
        raise HoigenError("pass either --in (render output) or --objects (a mesh folder), not both")
    _finish(stages.synthesize(in_dir, out, opts, common), quiet)


@convert_app.command("hoidiffusion")
def convert_hoidiffusion(
    src: Path = typer.Argument(..., help="Folder (or file) of HOIDiffusion's release: SD checkpoint, model_ad_*.pth."),
    out: Path = typer.Option(..., "--out", help="Folder for the diffusers base model and adapters/{pose,normal,seg}."),
    config: str | None = typer.Option(
        None,
        "--config",
        help="Diffusers SD 1.x folder or hub id giving the base model its configs and tokenizer "
        "[default: CompVis/stable-diffusion-v1-4, the base HOIDiffusion trained on].",
    ),
) -> None:
    """Turn HOIDiffusion's released checkpoints into diffusers folders that synthesize --adapter paints with.

    Example: hoigen convert hoidiffusion hoidiffusion_release/ --out models/hoidiffusion
    """
    from hoigen.diffusion.convert import convert_hoidiffusion as run_convert

    for line in run_convert(src, out, config):
        typer.echo(line)


@app.command()
def export(
    in_dir: Path = typer.Option(Path("out/synth"), "--in", help="Synthesize (or render) output folder."),
    out: Path = typer.Option(Path("out/nocs"), "--out", help="Dataset folder."),
    format: str | None = typer.Option(
        None, "--format", help="Dataset format: nocs or bop." + _default(ExportOptions, "format")
    ),
    split: str | None = typer.Option(None, "--split", help="Split name." + _default(ExportOptions, "split")),
    val_fraction: float | None = typer.Option(
        None,
        "--val-fraction",
        help="Share of grasp trajectories written to the val split." + _default(ExportOptions, "val_fraction"),
    ),
    mix: Path | None = typer.Option(
        None,
        "--mix",
        help="A real NOCS-layout dataset to mix with (the paper's mixed training set): writes mixed_<split>_list.txt.",
    ),
    ratio: float | None = typer.Option(
        None, "--ratio", help="Synthetic share of the mixed list." + _default(ExportOptions, "ratio")
    ),
    mix_mode: str | None = typer.Option(
        None, "--mix-mode", help="replace (keep the real set's size) or add." + _default(ExportOptions, "mix_mode")
    ),
    quiet: bool = QUIET,
) -> None:
    """Write a dataset that 6D pose estimators read: NOCS CAMERA layout or BOP.

    Reads synthesize (or render) shards. nocs: <split>/<scene>/<idx>_color.png, _coord.png,
    _depth.png, _mask.png, _meta.txt, _hand.json; obj_models/, gts/, <split>_list.txt.
    bop: <split>/<scene>/rgb, depth, mask, mask_visib, scene_gt*.json, scene_camera.json; models/.

    Example: hoigen export --in out/synth --format bop --out out/bop
    """
    from hoigen import stages

    opts = _options(
        ExportOptions, format=format, split=split, val_fraction=val_fraction, mix=mix, ratio=ratio, mix_mode=mix_mode
    )
    _finish(stages.export(in_dir, out, opts, quiet), quiet)


@eval_app.command("pose")
def eval_pose(
    pred: Path = typer.Argument(..., help="Prediction pose file (hoigen-pose-v1 JSON)."),
    gt: Path = typer.Argument(..., help="Ground-truth pose file, or a NOCS export folder (its gts/<split>.json)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """NOCS metrics: 3D IoU 25/50 and 5deg2cm, 5deg5cm, 10deg2cm, 10deg5cm mAP, in percent.

    Example: hoigen eval pose preds.json out/nocs/gts/train.json
    """
    import json

    from hoigen import stages

    result = stages.eval_pose(pred, gt)
    names = ("iou25", "iou50", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm")
    typer.echo(f"{result['images']} images, {result['instances']} ground-truth instances")
    typer.echo("class        " + " ".join(f"{n:>9}" for n in names))
    for cls, row in sorted(result["per_class"].items()):
        typer.echo(f"{cls:<12} " + " ".join(f"{row[n]:9.2f}" for n in names))
    typer.echo(f"{'mean':<12} " + " ".join(f"{result[n]:9.2f}" for n in names))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1, sort_keys=True))


@app.command()
def train(
    in_dir: Path = typer.Option(
        Path("out/synth"),
        "--in",
        help="Shards with images: synthesize or `ingest dexycb` output (render output: shade.png stands in).",
    ),
    out: Path = typer.Option(Path("out/model"), "--out", help="Folder for the trained diffusers pipeline."),
    model: str | None = typer.Option(
        None, "--model", help="Base pipeline to fine-tune." + _default(TrainOptions, "model")
    ),
    controlnet: str | None = typer.Option(None, "--controlnet", help="Start from this ControlNet (folder or hub id)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimisation steps." + _default(TrainOptions, "steps")),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (the paper's)." + _default(TrainOptions, "lr")),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Batch size per process." + _default(TrainOptions, "batch_size")
    ),
    size: int | None = typer.Option(None, "--size", help="Training resolution." + _default(TrainOptions, "size")),
    text_dropout: float | None = typer.Option(
        None, "--text-dropout", help="Prompt dropout for CFG." + _default(TrainOptions, "text_dropout")
    ),
    bg_dir: Path | None = typer.Option(None, "--bg-dir", help="Background buffer: a folder of scenery images."),
    bg_every: int | None = typer.Option(
        None, "--bg-every", help="A background batch every N steps." + _default(TrainOptions, "bg_every")
    ),
    bg_weight: float | None = typer.Option(
        None, "--bg-weight", help="Background regularisation weight (0: none)." + _default(TrainOptions, "bg_weight")
    ),
    captions: Path | None = typer.Option(
        None, "--captions", help="Captions file: .json {key: caption}, .jsonl, or key<TAB>caption lines."
    ),
    caption_hook: str | None = typer.Option(
        None, "--caption-hook", help="module:function(image, ann) -> caption, for samples without one."
    ),
    train_unet_attention: bool | None = typer.Option(
        None, "--train-unet-attention/--no-train-unet-attention", help="Also train the UNet's attention layers."
    ),
    gradient_checkpointing: bool | None = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory."
    ),
    mixed_precision: str | None = typer.Option(
        None, "--mixed-precision", help="no, fp16 or bf16." + _default(TrainOptions, "mixed_precision")
    ),
    use_8bit_adam: bool | None = typer.Option(
        None, "--use-8bit-adam/--no-8bit-adam", help="8-bit AdamW (needs bitsandbytes)."
    ),
    ema_decay: float | None = typer.Option(
        None,
        "--ema-decay",
        help="Keep an EMA of the weights (e.g. 0.9999); 0 = off." + _default(TrainOptions, "ema_decay"),
    ),
    lr_scheduler: str | None = typer.Option(
        None,
        "--lr-scheduler",
        help="constant, constant_with_warmup, linear, cosine, ..." + _default(TrainOptions, "lr_scheduler"),
    ),
    lr_warmup_steps: int | None = typer.Option(None, "--lr-warmup-steps", help="Warm-up steps."),
    max_grad_norm: float | None = typer.Option(None, "--max-grad-norm", help="Gradient clipping (0 = off)."),
    checkpoint_every: int | None = typer.Option(
        None,
        "--checkpoint-every",
        help="Save a resumable checkpoint every N steps (0 = never)." + _default(TrainOptions, "checkpoint_every"),
    ),
    keep_checkpoints: int | None = typer.Option(
        None, "--keep-checkpoints", help="Newest checkpoints kept." + _default(TrainOptions, "keep_checkpoints")
    ),
    resume: str | None = typer.Option(
        None,
        "--resume",
        help="auto (latest checkpoint in --out, if any), never, or a checkpoint." + _default(TrainOptions, "resume"),
    ),
    validate_every: int | None = typer.Option(
        None, "--validate-every", help="Write OUT/validation/step-N.png every N steps (0 = never)."
    ),
    validation_images: int | None = typer.Option(None, "--validation-images", help="Fixed validation conditions."),
    validation_steps: int | None = typer.Option(None, "--validation-steps", help="Validation denoising steps."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads [default: torch's choice]."),
    seed: int = SEED,
    quiet: bool = QUIET,
) -> None:
    """Fine-tune the HOI ControlNet on shards (noise-prediction loss + background regularisation).

    Reads shards with images; writes a diffusers pipeline folder that synthesize --model loads
    (its controlnet/ also works with synthesize --controlnet), plus train_log.csv, checkpoints/
    and validation/. Reruns resume from the latest checkpoint. Multi-GPU and mixed precision:
    accelerate launch -m hoigen train ...

    Example: hoigen train --in out/synth --steps 200 --bg-dir scenery/ --out out/model
    """
    from hoigen import stages

    opts = _options(
        TrainOptions,
        model=model,
        controlnet=controlnet,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        size=size,
        text_dropout=text_dropout,
        bg_dir=bg_dir,
        bg_every=bg_every,
        bg_weight=bg_weight,
        captions=captions,
        caption_hook=caption_hook,
        train_unet_attention=train_unet_attention,
        gradient_checkpointing=gradient_checkpointing,
        mixed_precision=mixed_precision,
        use_8bit_adam=use_8bit_adam,
        ema_decay=ema_decay,
        lr_scheduler=lr_scheduler,
        lr_warmup_steps=lr_warmup_steps,
        max_grad_norm=max_grad_norm,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        resume=resume,
        validate_every=validate_every,
        validation_images=validation_images,
        validation_steps=validation_steps,
        threads=threads,
    )
    _finish(stages.train(in_dir, out, opts, _common(seed, 1, None, None, quiet)), quiet)


@ingest_app.command("dexycb")
def ingest_dexycb(
    root: Path = typer.Argument(..., help="The DexYCB release folder (DEX_YCB_DIR: calibration/, models/, subjects)."),
    out: Path = typer.Option(Path("out/dexycb"), "--out", help="Output folder for the shards."),
    size: int | None = typer.Option(
        None, "--size", help="Centre-crop to a square and scale to SIZE px (K and 2D joints follow) [default: 640x480]."
    ),
    frame_step: int = typer.Option(1, "--frame-step", help="Keep every N-th frame."),
    subjects: str | None = typer.Option(None, "--subjects", help="Comma-separated subject folders (default: all)."),
    serials: str | None = typer.Option(None, "--serials", help="Comma-separated camera serials (default: all)."),
    mano_dir: Path | None = typer.Option(
        None,
        "--mano-dir",
        envvar="HOIGEN_MANO_DIR",
        help="Real MANO files: converts DexYCB's PCA hand pose to the full 45-D hand_pose.",
    ),
    seed: int = SEED,
    workers: int = WORKERS,
    shard_index: int | None = SHARD_INDEX,
    num_shards: int | None = NUM_SHARDS,
    quiet: bool = QUIET,
) -> None:
    """Convert DexYCB (its release layout) to hoigen shards that hoigen train reads.

    Writes one shard per (sequence, camera) with image.jpg, depth.png, seg.png, and the conditions
    drawn as render draws them: normal.png (from depth), skeleton.png (from the 2D joints), plus
    MANO/object poses, camera and joints in ann.json. Grasped objects' meshes go to objects/.

    Example: hoigen ingest dexycb $DEX_YCB_DIR --size 512 --frame-step 4 --out out/dexycb
    """
    from hoigen.ingest.dexycb import ingest_dexycb as run_ingest

    if frame_step < 1:
        raise HoigenError(f"--frame-step must be at least 1, got {frame_step}")

    def names(text: str | None) -> list[str] | None:
        return [n.strip() for n in text.split(",") if n.strip()] if text else None

    summary = run_ingest(
        root, out, _common(seed, workers, shard_index, num_shards, quiet), size=size, frame_step=frame_step,
        subjects=names(subjects), serials=names(serials), mano_dir=mano_dir,
    )
    _finish(summary, quiet)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="A recipe YAML, e.g. recipes/quickstart.yaml."),
    out: Path | None = typer.Option(None, "--out", help="Override the recipe's output folder."),
    workers: int | None = typer.Option(None, "--workers", help="Override the recipe's worker count."),
    quiet: bool = QUIET,
) -> None:
    """Run a whole chain from a recipe (grasp, render, synthesize, export, train as present).

    Writes OUT/grasp, OUT/render, OUT/synth, OUT/nocs, OUT/model and OUT/contact_sheet.png.

    Example: hoigen run recipes/quickstart.yaml --out demo
    """
    from hoigen import stages
    from hoigen.config import load_recipe

    rec = load_recipe(recipe)
    if out is not None:
        rec.out = out
    if workers is not None:
        rec.workers = workers
    stages.run_recipe(rec, quiet)


@app.command()
def inspect(
    shards: Path = typer.Argument(..., help="A stage's output folder."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Contact sheet path [default: SHARDS/contact_sheet.png]."),
    rows: int = typer.Option(12, "--rows", help="Samples in the contact sheet."),
) -> None:
    """Count what a shard folder holds, show its index, and write a contact-sheet PNG.

    Example: hoigen inspect out/render
    """
    from hoigen import stages

    stages.inspect(shards, sheet, rows)


@app.command()
def validate(
    folder: Path = typer.Argument(..., help="A stage's output folder (grasp, render or synthesize)."),
) -> None:
    """Check every shard of a stage folder against the shard contract; list every problem.

    Checks members per stage, ann.json fields and shapes, PNG sizes and modes, index rows against the
    shards, missing shards and leftover temporary files. Exit 0 with one OK line, else 1.

    Example: hoigen validate out/render
    """
    from hoigen.data.validate import format_report
    from hoigen.data.validate import validate as check

    report = check(folder)
    for line in format_report(report):
        typer.echo(line, err=not report.ok)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def merge(
    out: Path = typer.Argument(..., help="The merged folder (may be the folder the ranks shared)."),
    rank_dirs: list[Path] = typer.Argument(None, help="Ranks' own output folders to copy in (none: merge in place)."),
    partial: bool = typer.Option(False, "--partial", help="Write the index even while shards are missing."),
    quiet: bool = QUIET,
) -> None:
    """Join ranks' outputs: copy their shards into OUT and write one index.parquet and run.json.

    Example: hoigen merge out/render out/render-rank0 out/render-rank1
    """
    from hoigen.data.merge import merge as join

    _finish(join(out, list(rank_dirs or []), partial), quiet)


@assets_app.command("build-hand")
def build_hand(out: Path = typer.Option(..., "--out", help="Folder for MANO_RIGHT.pkl and MANO_LEFT.pkl.")) -> None:
    """Rebuild the embedded hand model in MANO's pickle format (the shipped copy is built this way)."""
    from hoigen.hand import build_hand_files

    for path in build_hand_files(out):
        typer.echo(str(path))


@assets_app.command("show")
def show_assets(
    out: Path = typer.Option(..., "--out", help="PNG to write: the hand in a few poses and each object category."),
    tile: int = typer.Option(256, "--tile", help="Size in pixels of each square picture."),
    mano_dir: Path | None = typer.Option(None, "--mano-dir", help="Show real MANO from this folder instead."),
    seed: int = typer.Option(0, "--seed", help="Seed of the procedural objects shown."),
) -> None:
    """Render a picture of the embedded hand (flat, curled, fist, PCA samples, left) and the objects."""
    from hoigen.assets_preview import write_assets_picture

    typer.echo(str(write_assets_picture(out, tile=tile, mano_dir=mano_dir, seed=seed)))


def _finish(summary: Any, quiet: bool) -> None:
    if summary is not None and hasattr(summary, "line"):
        info(summary.line(), quiet)


class Interrupted(BaseException):
    """SIGINT/SIGTERM: raised past click (which would turn Ctrl-C into exit 1) to exit 130."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise Interrupted


def main_guard(fn: Any) -> None:
    """Run ``fn`` as the CLI runs a command: one-line errors (exit 1), 130 on SIGINT/SIGTERM."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        fn()
    except HoigenError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Interrupted:
        import shlex

        command = shlex.join(["hoigen", *sys.argv[1:]])
        typer.echo(f"interrupted: finished shards are kept; to resume, rerun the same command: {command}", err=True)
        sys.exit(130)


def main() -> None:
    """Console entry point: one-line errors, exit 1 on failure, 2 on usage errors, 130 when interrupted."""
    main_guard(app)
