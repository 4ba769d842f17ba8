"""The public API: one function per stage, each ``stage(input, out, options, run=None, **overrides)``.

``input`` is the previous stage's folder (for :func:`grasp`, a mesh folder or None for the embedded
procedural objects), ``options`` the stage's options object (default: its defaults), ``overrides``
single option fields (``grasps=1``) or run fields (``seed=3``, ``workers=2``, ``quiet=True``), and
each returns a :class:`hoigen.data.runner.RunSummary`. The CLI and recipes call exactly these::

    import hoigen

    hoigen.grasp(None, "out/grasp", categories=["mug"], grasps=1, frames=2)
    hoigen.render("out/grasp", "out/render", views=1, size=64)
    hoigen.synthesize("out/render", "out/synth", steps=2)
    hoigen.export("out/synth", "out/nocs", format="nocs")
    hoigen.train("out/synth", "out/model", steps=10)
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from hoigen.data.progress import info
from hoigen.data.runner import RunSummary, run
from hoigen.diffusion.options import BackgroundOptions, SynthOptions, TrainOptions
from hoigen.export.options import ExportOptions
from hoigen.grasp.options import GraspOptions
from hoigen.options import Common, build
from hoigen.render.options import RenderOptions

CONDITION_MIN_SIZE = 256  # conditions rendered for `synthesize --objects` are at least this big (useful annotations)

PathLike = str | Path


def _resolve(cls: type, options: Any, run_options: Common | None, overrides: dict[str, Any]) -> tuple[Any, Common]:
    """(options, run options) from an options object (or None: defaults) and keyword overrides of either."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}, got {type(options).__name__}")
    run_names = {f.name for f in fields(Common)}
    mine = {k: v for k, v in overrides.items() if k not in run_names}
    theirs = {k: v for k, v in overrides.items() if k in run_names}
    if mine:
        base = options if options is not None else cls()
        options = build(cls, {**{f.name: getattr(base, f.name) for f in fields(cls)}, **mine})
    return (options if options is not None else cls()), replace(run_options or Common(), **theirs)


def grasp(
    objects: PathLike | None = None,
    out: PathLike = "out/grasp",
    options: GraspOptions | None = None,
    run_options: Common | None = None,
    **overrides: Any,
) -> RunSummary:
    """Objects (a mesh folder, or None: the embedded procedural objects) -> grasp shards in ``out``."""
    from hoigen.grasp.stage import GraspStage

    opts, common = _resolve(GraspOptions, options, run_options, overrides)
    if objects is not None:
        opts = replace(opts, objects=Path(objects))
    return run(GraspStage(opts), Path(out), common)


def render(
    inp: PathLike, out: PathLike = "out/render", options: RenderOptions | None = None,
    run_options: Common | None = None, **overrides: Any,
) -> RunSummary:  # fmt: skip
    """Grasp shards -> render shards (conditions and annotations)."""
    from hoigen.render.stage import RenderStage

    opts, common = _resolve(RenderOptions, options, run_options, overrides)
    return run(RenderStage(Path(inp), opts), Path(out), common)


def synthesize(
    inp: PathLike, out: PathLike = "out/synth", options: SynthOptions | None = None,
    run_options: Common | None = None, **overrides: Any,
) -> RunSummary:  # fmt: skip
    """Render shards -> synthesize shards (image.jpg, prompt.txt, gen.json added)."""
    from hoigen.diffusion.stage import SynthStage

    opts, common = _resolve(SynthOptions, options, run_options, overrides)
    return run(SynthStage(Path(inp), opts), Path(out), common)


def export(
    inp: PathLike, out: PathLike = "out/nocs", options: ExportOptions | None = None,
    run_options: Common | None = None, **overrides: Any,
) -> RunSummary:  # fmt: skip
    """Synthesize (or render) shards -> a NOCS CAMERA-style or BOP dataset folder."""
    from hoigen.export.stage import ExportStage

    opts, common = _resolve(ExportOptions, options, run_options, overrides)
    return run(ExportStage(Path(inp), opts), Path(out), common)


def train(
    inp: PathLike, out: PathLike = "out/model", options: TrainOptions | None = None,
    run_options: Common | None = None, **overrides: Any,
) -> RunSummary:  # fmt: skip
    """Shards with images -> a fine-tuned diffusers pipeline folder (``summary.stats``: steps and losses)."""
    from hoigen.data.runner import input_tasks
    from hoigen.diffusion.train_data import train_from_shards

    opts, common = _resolve(TrainOptions, options, run_options, overrides)
    tasks = input_tasks(Path(inp), ("synthesize", "render", "ingest"))
    stats = train_from_shards([t.source for t in tasks], Path(out), opts, common.seed, common.quiet)
    first, last = stats["first_loss"], stats["last_loss"]
    curve = f"loss {first:.4f} -> {last:.4f}" if first is not None else "scenery steps only"
    line = f"train: {stats['steps']} steps, {curve} -> {out}"
    if stats.get("process_index", 0) != 0:
        line = ""  # one line per run, from the main process
    return RunSummary("train", Path(out), len(tasks), len(tasks), message=line, stats=stats)


def backgrounds(
    out: PathLike = "out/scenery", options: BackgroundOptions | None = None,
    run_options: Common | None = None, **overrides: Any,
) -> RunSummary:  # fmt: skip
    """Scenery prompts -> a background buffer folder (images + captions.txt) for :func:`train`'s ``bg_dir``."""
    from hoigen.diffusion.backgrounds import write_backgrounds

    opts, common = _resolve(BackgroundOptions, options, run_options, overrides)
    record = write_backgrounds(Path(out), opts, common.seed, common.quiet)
    line = f"backgrounds: {record['images']} images from {record['model'].get('model')} -> {out}"
    return RunSummary("backgrounds", Path(out), 0, 0, message=line, stats=record)


def ingest_dexycb(root: PathLike, out: PathLike = "out/dexycb", options: Any = None,
                  run_options: Common | None = None, **overrides: Any) -> RunSummary:  # fmt: skip
    """A DexYCB release -> shards that :func:`train` reads."""
    from hoigen.ingest.dexycb import IngestStage
    from hoigen.ingest.options import IngestOptions

    opts, common = _resolve(IngestOptions, options, run_options, overrides)
    return run(IngestStage(Path(root), opts), Path(out), common)


def conditions_for(
    objects: Path | None, synth: SynthOptions, work: Path, common: Common,
    grasp_options: GraspOptions | None = None, render_options: RenderOptions | None = None,
) -> Path:  # fmt: skip
    """Grasp and render into ``work`` for ``synthesize --objects``; returns the render folder.

    ``grasp_options``/``render_options`` are the stages' options (default: their defaults); without a
    render size the conditions are rendered at the synthesis size (at least 256 px, so the annotations
    stay useful)."""
    render_options = render_options or RenderOptions()
    if render_options.size is None:
        render_options = replace(render_options, size=max(synth.image_size(), CONDITION_MIN_SIZE))
    say(grasp(objects, work / "grasp", grasp_options, common), common.quiet)
    say(render(work / "grasp", work / "render", render_options, common), common.quiet)
    return work / "render"


def say(summary: RunSummary, quiet: bool = False) -> None:
    """Print a summary's one line (unless quiet, or it has none)."""
    line = summary.line()
    if line:
        info(line, quiet)


def run_recipe(recipe: Any, quiet: bool = False) -> None:
    """Run every stage a recipe (:class:`hoigen.recipe.Recipe`) names, in order, into ``recipe.out/<stage>``."""
    from hoigen.errors import HoigenError

    out = Path(recipe.out)
    common = Common(seed=recipe.seed, workers=recipe.workers, quiet=quiet)
    last = None
    if recipe.grasp is not None:
        say(grasp(None, out / "grasp", recipe.grasp, common), quiet)
        last = out / "grasp"
    if recipe.render is not None:
        say(render(out / "grasp", out / "render", recipe.render, common), quiet)
        last = out / "render"
    if recipe.synthesize is not None:
        say(synthesize(out / "render", out / "synth", recipe.synthesize, common), quiet)
        last = out / "synth"
    if recipe.export is not None:
        say(export(last, out / "nocs", recipe.export, common), quiet)
    if recipe.train is not None:
        source = recipe.train.data or last
        if source is None:
            raise HoigenError("recipe: the train section needs data: SHARDS (or a grasp/render/synthesize section)")
        say(train(source, out / "model", recipe.train, common), quiet)
    if last is not None and last != out / "grasp":
        from hoigen.preview import contact_sheet, spread_samples

        sheet = contact_sheet(spread_samples(last, 12), out / "contact_sheet.png")
        info(f"contact sheet: {sheet}", quiet)


def convert_hoidiffusion(src: PathLike, out: PathLike, config: str | None = None) -> list[str]:
    """HOIDiffusion's released checkpoints (``src``) -> diffusers folders in ``out``; returns the lines to print."""
    from hoigen.diffusion.convert import convert_hoidiffusion as convert

    return convert(Path(src), Path(out), config)


def eval_pose(pred: PathLike, gt: PathLike) -> dict[str, Any]:
    """NOCS metrics (mAP, percent) of a prediction pose file against a ground-truth pose file (or export folder)."""
    from hoigen.pose.files import read_pose_file
    from hoigen.pose.metrics import evaluate

    return evaluate(read_pose_file(Path(pred)), read_pose_file(Path(gt)))


def inspect(folder: PathLike, sheet: PathLike | None = None, rows: int = 12) -> Path:
    """Print counts and the head of a stage folder's index; write a contact sheet (its path is returned)."""
    from rich.table import Table

    from hoigen.data.contract import read_run_json
    from hoigen.data.index import read_index
    from hoigen.data.progress import console
    from hoigen.data.shards import list_shards, read_shard
    from hoigen.errors import HoigenError
    from hoigen.preview import contact_sheet, spread_samples

    folder = Path(folder)
    shards = list_shards(folder)
    if not shards:
        raise HoigenError(f"{folder}: no shards (shard-*.tar) found; point at a stage's output folder")
    table = read_index(folder)
    run_record = read_run_json(folder)
    console.print(
        f"[bold]{folder}[/]: stage {run_record.get('stage', '?')}, {len(shards)} shards, {table.num_rows} samples"
    )
    if "category" in table.column_names and table.num_rows:
        counts: dict[str, int] = {}
        for c in table.column("category").to_pylist():
            counts[c] = counts.get(c, 0) + 1
        console.print("categories: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    view = Table(show_header=True, header_style="bold")
    skip = {"shard", "object", "grasp", "frame", "view"}
    columns = [c for c in table.column_names if c not in skip][:7]
    for c in columns:
        view.add_column(c)
    for row in table.slice(0, 10).to_pylist():
        view.add_row(*[f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns])
    console.print(view)
    members = sorted({k for s in read_shard(shards[0], decode=False) for k in s if not k.startswith("__")})
    console.print("fields: " + ", ".join(members))
    path = contact_sheet(spread_samples(folder, rows), Path(sheet) if sheet else folder / "contact_sheet.png",
                         max_rows=rows)  # fmt: skip
    console.print(f"contact sheet: {path}")
    return path
