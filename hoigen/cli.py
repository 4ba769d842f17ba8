"""The ``hoigen`` command line: thin commands over :mod:`hoigen.api`, flags generated from the options dataclasses."""

from __future__ import annotations

import functools
import signal
import sys
import typing
from collections.abc import Callable
from dataclasses import fields
from inspect import Parameter, signature
from pathlib import Path
from typing import Any

import typer

from hoigen import __version__
from hoigen.data.progress import info
from hoigen.diffusion.options import SynthOptions, TrainOptions
from hoigen.errors import HoigenError
from hoigen.export.options import ExportOptions
from hoigen.grasp.options import GraspOptions
from hoigen.ingest.options import IngestOptions
from hoigen.options import Common, FieldType, UsageError, build, default_text, field_types, flag_of, spec_of
from hoigen.render.options import RenderOptions

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
eval_app = typer.Typer(help="Evaluate predictions against exported ground truth.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

# Options: one CLI flag per field of a stage's options dataclass ----------------------------------
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines.")
ALL_RUN = (Common, None)  # every run option: --seed, --workers, --shard-index, --num-shards, --quiet


def with_options(**groups: type | tuple[type, tuple[str, ...] | None]) -> Callable[[Callable], Callable]:
    """Give a command one CLI flag per option field; the command receives the built options objects.

    ``@with_options(opts=SynthOptions, common=(Common, ("seed", "quiet")))`` replaces the function's
    parameters ``opts`` and ``common`` by flags for the fields (all, or those named), with help text
    and the default from the field's :func:`hoigen.options.option` metadata. A flag not given is
    left out, so the dataclass default applies; the objects are checked like recipes (one-line
    errors naming the flag, exit 2).
    """

    def decorate(fn: Callable) -> Callable:
        sig = signature(fn)
        hints = typing.get_type_hints(fn)
        own = [p.replace(annotation=hints.get(n, p.annotation)) for n, p in sig.parameters.items() if n not in groups]
        taken = {p.name for p in own}
        generated: list[Parameter] = []
        members: dict[str, list[str]] = {}
        for group, spec in groups.items():
            cls, names = spec if isinstance(spec, tuple) else (spec, None)
            members[group] = []
            kinds = field_types(cls)
            for f in fields(cls):
                if not spec_of(f).cli or (names is not None and f.name not in names):
                    continue
                if f.name in taken:
                    raise TypeError(f"{fn.__name__}: option {f.name} of {cls.__name__} clashes with another parameter")
                taken.add(f.name)
                members[group].append(f.name)
                generated.append(_parameter(f, kinds[f.name]))

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for group, spec in groups.items():
                cls = spec[0] if isinstance(spec, tuple) else spec
                given = {n: kwargs.pop(n) for n in members[group]}
                kwargs[group] = build(cls, {k: v for k, v in given.items() if v is not None and v != []})
            return fn(**kwargs)

        params = own + generated
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _parameter(f: Any, kind: FieldType) -> Parameter:
    """The typer option of one options field: its flag(s), help text with the default, env var."""
    spec = spec_of(f)
    if spec.flag:
        decls = [spec.flag]
    elif kind.base is bool and spec.pair:
        decls = [f"{flag_of(f.name)}/--no-{f.name.replace('_', '-')}"]
    else:
        decls = [flag_of(f.name)]
    if spec.short:
        decls.append(spec.short)
    shown = default_text(f)
    text = spec.help + (f" [default: {shown}]" if shown else "")
    annotation = list[kind.base] if kind.is_list else kind.base  # type: ignore[name-defined]
    metavar = f"<{'|'.join(spec.choices)}>" if spec.choices else None
    if kind.is_list:  # "--categories mug,bowl", or a repeatable flag
        metavar = f"<{kind.base.__name__},...>" if spec.split else f"<{kind.base.__name__}> (repeatable)"
    option = typer.Option(None, *decls, help=text, envvar=spec.envvar, show_default=False, metavar=metavar)
    return Parameter(f.name, Parameter.KEYWORD_ONLY, default=option, annotation=annotation | None)


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
@with_options(opts=GraspOptions, common=ALL_RUN)
def grasp(
    out: Path = typer.Option(Path("out/grasp"), "--out", help="Output folder."),
    report: bool = typer.Option(False, "--report", help="Print metric tables per object and category (stderr)."),
    opts: GraspOptions = None,  # type: ignore[assignment]
    common: Common = None,  # type: ignore[assignment]
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
    from hoigen import api

    api.say(api.grasp(None, out, opts, common), common.quiet)
    if report:
        from hoigen.grasp.report import print_report

        print_report(out)


@app.command()
@with_options(opts=RenderOptions, common=ALL_RUN)
def render(
    in_dir: Path = typer.Option(Path("out/grasp"), "--in", help="Grasp output folder."),
    out: Path = typer.Option(Path("out/render"), "--out", help="Output folder."),
    opts: RenderOptions = None,  # type: ignore[assignment]
    common: Common = None,  # type: ignore[assignment]
) -> None:
    """Render condition maps and annotations from sampled cameras.

    Reads grasp shards; writes one sample per frame and view (key object_grasp_frame_view) with
    normal.png, seg.png, skeleton.png (conditions), depth.png (uint16 mm), nocs.png, shade.png,
    amodal.png (bit 0 hand, bit 1 object) and the camera, 2D joints, visibility and boxes in ann.json.

    Example: hoigen render --in out/grasp --views 4 --size 512 --out out/render
    """
    from hoigen import api

    api.say(api.render(in_dir, out, opts, common), common.quiet)


@app.command()
@with_options(opts=SynthOptions, common=ALL_RUN)
def synthesize(
    in_dir: Path | None = typer.Option(
        None,
        "--in",
        help="Render output folder. Without it, grasp and render run "
        "first into OUT/work from --objects (or the embedded objects).",
    ),
    objects: Path | None = typer.Option(None, "--objects", help="Mesh folder to grasp and render first."),
    out: Path = typer.Option(Path("out/synth"), "--out", help="Output folder."),
    opts: SynthOptions = None,  # type: ignore[assignment]
    common: Common = None,  # type: ignore[assignment]
) -> None:
    """Paint images on the rendered conditions with the HOI diffusion model.

    Reads render shards; writes them again with image.jpg, prompt.txt and gen.json (model, seed,
    steps, guidance, scheduler, scales). The conditions (normal + segmentation + skeleton) enter one
    ControlNet as a 9-channel map. --model and --controlnet take a local diffusers folder or a hub
    id (looked up in the Hugging Face cache first; the hub is asked only when reachable).

    Example: hoigen synthesize --objects ycb/ --prompts prompts.txt --out out/synth
    """
    from hoigen import api

    if in_dir is None:
        in_dir = api.conditions_for(objects, opts, out / "work", common)
    elif objects is not None:
        raise UsageError("pass either --in (render output) or --objects (a mesh folder), not both")
    api.say(api.synthesize(in_dir, out, opts, common), common.quiet)


@app.command()
@with_options(opts=ExportOptions, common=(Common, ("quiet", "overwrite")))
def export(
    in_dir: Path = typer.Option(Path("out/synth"), "--in", help="Synthesize (or render) output folder."),
    out: Path = typer.Option(Path("out/nocs"), "--out", help="Dataset folder."),
    opts: ExportOptions = None,  # type: ignore[assignment]
    common: Common = None,  # type: ignore[assignment]
) -> None:
    """Write a dataset that 6D pose estimators read: NOCS CAMERA layout or BOP.

    Reads synthesize (or render) shards. nocs: <split>/<scene>/<idx>_color.png, _coord.png,
    _depth.png, _mask.png, _meta.txt, _hand.json; obj_models/, gts/, <split>_list.txt.
    bop: <split>/<scene>/rgb, depth, mask, mask_visib, scene_gt*.json, scene_camera.json; models/.

    Example: hoigen export --in out/synth --format bop --out out/bop
    """
    from hoigen import api

    api.say(api.export(in_dir, out, opts, common), common.quiet)


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

    from hoigen import api

    result = api.eval_pose(pred, gt)
    names = ("iou25", "iou50", "5deg2cm", "5deg5cm", "10deg2cm", "10deg5cm")
    typer.echo(f"{result['images']} images, {result['instances']} ground-truth instances")
    typer.echo("class        " + " ".join(f"{n:>9}" for n in names))
    for cls, row in sorted(result["per_class"].items()):
        typer.echo(f"{cls:<12} " + " ".join(f"{row[n]:9.2f}" for n in names))
    typer.echo(f"{'mean':<12} " + " ".join(f"{result[n]:9.2f}" for n in names))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1, sort_keys=True))


@app.command()
@with_options(opts=TrainOptions, common=(Common, ("seed", "quiet")))
def train(
    in_dir: Path = typer.Option(
        Path("out/synth"),
        "--in",
        help="Shards with images: synthesize or `ingest dexycb` output (render output: shade.png stands in).",
    ),
    out: Path = typer.Option(Path("out/model"), "--out", help="Folder for the trained diffusers pipeline."),
    opts: TrainOptions = None,  # type: ignore[assignment]
    common: Common = None,  # type: ignore[assignment]
) -> None:
    """Fine-tune the HOI ControlNet on shards (noise-prediction loss + background regularisation).

    Reads shards with images; writes a diffusers pipeline folder that synthesize --model loads
    (its controlnet/ also works with synthesize --controlnet), plus train_log.csv, checkpoints/
    and validation/. Reruns resume from the latest checkpoint. Multi-GPU and mixed precision:
    accelerate launch -m hoigen train ...

    Example: hoigen train --in out/synth --steps 200 --bg-dir scenery/ --out out/model
    """
    from hoigen import api

    api.say(api.train(in_dir, out, opts, common), common.quiet)


@ingest_app.command("dexycb")
@with_options(opts=IngestOptions, common=ALL_RUN)
def ingest_dexycb(
    root: Path = typer.Argument(..., help="The DexYCB release folder (DEX_YCB_DIR: calibration/, models/, subjects)."),
    out: Path = typer.Option(Path("out/dexycb"), "--out", help="Output folder for the shards."),
    opts: IngestOptions = None,  # type: ignore[assignment]
    common: Common = None,  # type: ignore[assignment]
) -> None:
    """Convert DexYCB (its release layout) to hoigen shards that hoigen train reads.

    Writes one shard per (sequence, camera) with image.jpg, depth.png, seg.png, and the conditions
    drawn as render draws them: normal.png (from depth), skeleton.png (from the 2D joints), plus
    MANO/object poses, camera and joints in ann.json. Grasped objects' meshes go to objects/.

    Example: hoigen ingest dexycb $DEX_YCB_DIR --size 512 --frame-step 4 --out out/dexycb
    """
    from hoigen import api

    api.say(api.ingest_dexycb(root, out, opts, common), common.quiet)


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
    from dataclasses import replace

    from hoigen import api
    from hoigen.recipe import load_recipe

    rec = load_recipe(recipe)
    if out is not None:
        rec = replace(rec, out=out)
    if workers is not None:
        rec = replace(rec, workers=workers)
    api.run_recipe(rec, quiet)


@app.command()
def inspect(
    shards: Path = typer.Argument(..., help="A stage's output folder."),
    sheet: Path | None = typer.Option(None, "--sheet", help="Contact sheet path [default: SHARDS/contact_sheet.png]."),
    rows: int = typer.Option(12, "--rows", help="Samples in the contact sheet."),
) -> None:
    """Count what a shard folder holds, show its index, and write a contact-sheet PNG.

    Example: hoigen inspect out/render
    """
    from hoigen import api

    api.inspect(shards, sheet, rows)


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

    info(join(out, list(rank_dirs or []), partial).line(), quiet)


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
