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
assets_app = typer.Typer(help="Build the embedded assets shipped with hoigen.", no_args_is_help=True)
app.add_typer(assets_app, name="assets")
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

    Example: hoigen grasp --objects ycb/ --grasps 4 --frames 8 --out out/grasp
    """
    from hoigen import stages

    opts = _options(
        GraspOptions,
        objects=objects,
        categories=categories,
        category=category,
        grasps=grasps,
        frames=frames,
        side=side,
        mano_dir=mano_dir,
    )
    _finish(stages.grasp(opts, out, _common(seed, workers, shard_index, num_shards, quiet)), quiet)


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
    controlnet: str | None = typer.Option(None, "--controlnet", help="Folder or hub id of the HOI ControlNet."),
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
    seed: int = SEED,
    workers: int = WORKERS,
    shard_index: int | None = SHARD_INDEX,
    num_shards: int | None = NUM_SHARDS,
    quiet: bool = QUIET,
) -> None:
    """Paint images on the rendered conditions with the HOI diffusion model.

    Reads render shards; writes them again with image.jpg, prompt.txt and gen.json (model, seed,
    steps, guidance). The conditions (normal + segmentation + skeleton) enter one ControlNet as a
    9-channel map.

    Example: hoigen synthesize --objects ycb/ --prompts prompts.txt --out out/synth
    """
    from hoigen import stages

    common = _common(seed, workers, shard_index, num_shards, quiet)
    opts = _options(
        SynthOptions,
        prompts=prompts,
        model=model,
        controlnet=controlnet,
        steps=steps,
        guidance=guidance,
        size=size,
        negative_prompt=negative_prompt,
        batch_size=batch_size,
        device=device,
    )
    if in_dir is None:
        in_dir = stages.prepare_conditions(_options(GraspOptions, objects=objects), opts, out / "work", common)
    elif objects is not None:
        raise HoigenError("pass either --in (render output) or --objects (a mesh folder), not both")
    _finish(stages.synthesize(in_dir, out, opts, common), quiet)


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
        help="Shards with images (synthesize output, or render output whose shade.png stands in for photos).",
    ),
    out: Path = typer.Option(Path("out/model"), "--out", help="Folder for the trained diffusers pipeline."),
    model: str | None = typer.Option(
        None, "--model", help="Base pipeline to fine-tune." + _default(TrainOptions, "model")
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimisation steps." + _default(TrainOptions, "steps")),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate." + _default(TrainOptions, "lr")),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Batch size." + _default(TrainOptions, "batch_size")
    ),
    size: int | None = typer.Option(None, "--size", help="Training resolution." + _default(TrainOptions, "size")),
    text_dropout: float | None = typer.Option(
        None, "--text-dropout", help="Prompt dropout for CFG." + _default(TrainOptions, "text_dropout")
    ),
    bg_dir: Path | None = typer.Option(None, "--bg-dir", help="Background buffer: a folder of scenery images."),
    bg_every: int | None = typer.Option(None, "--bg-every", help="Use a background batch every N steps."),
    bg_weight: float | None = typer.Option(
        None, "--bg-weight", help="Background regularisation weight." + _default(TrainOptions, "bg_weight")
    ),
    seed: int = SEED,
    quiet: bool = QUIET,
) -> None:
    """Fine-tune the HOI ControlNet on shards (noise-prediction loss + background regularisation).

    Reads shards with images; writes a diffusers pipeline folder that synthesize --model loads.

    Example: hoigen train --in out/synth --steps 200 --out out/model
    """
    from hoigen import stages

    opts = _options(
        TrainOptions,
        model=model,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        size=size,
        text_dropout=text_dropout,
        bg_dir=bg_dir,
        bg_every=bg_every,
        bg_weight=bg_weight,
    )
    _finish(stages.train(in_dir, out, opts, _common(seed, 1, None, None, quiet)), quiet)


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
