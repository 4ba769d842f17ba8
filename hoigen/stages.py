"""The programmatic API: one function per stage, used by the CLI and by recipes.

Each function plans the stage's tasks (input shard i -> output shard i), records how the output was
made in ``run.json`` and hands the work to :func:`hoigen.data.runner.run_stage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoigen.config import (
    Common,
    ExportOptions,
    GraspOptions,
    Recipe,
    RenderOptions,
    SynthOptions,
    TrainOptions,
    to_config,
)
from hoigen.data.index import read_index, read_run_json
from hoigen.data.progress import console, info, make_progress
from hoigen.data.runner import RunSummary, StageContext, Task, run_stage
from hoigen.data.shards import list_shards, read_shard, shard_index
from hoigen.errors import HoigenError

TINY_SIZE = 64
REAL_SIZE = 512


def synth_size(opts: SynthOptions) -> int:
    """The image size: as given, else 64 for the tiny stand-ins (tiny-random, tiny-trained) and 512 for real weights."""
    if opts.size:
        return opts.size
    return TINY_SIZE if opts.model in (None, "", "tiny-random", "tiny-trained") else REAL_SIZE


def input_tasks(in_dir: Path, produced_by: tuple[str, ...]) -> list[Task]:
    """One task per finished input shard; a clear error when the folder is not what we need."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise HoigenError(f"{in_dir}: input folder does not exist; run hoigen {produced_by[0]} first or pass --in")
    shards = list_shards(in_dir)
    if not shards:
        raise HoigenError(f"{in_dir}: no shards (shard-*.tar) found; run hoigen {produced_by[0]} into it first")
    stage = read_run_json(in_dir).get("stage")
    if stage is not None and stage not in produced_by:
        raise HoigenError(f"{in_dir}: holds '{stage}' output, but this stage reads {' or '.join(produced_by)} output")
    return [Task(shard_index(p), p) for p in shards]


def _run(
    fn: Any,
    tasks: list[Task],
    stage: str,
    out: Path,
    common: Common,
    config: dict[str, Any],
    in_dir: Path | None,
    extra: dict[str, Any],
) -> RunSummary:
    ctx = StageContext(stage=stage, seed=common.seed, config=config, out_dir=Path(out), in_dir=in_dir)
    return run_stage(
        fn,
        tasks,
        ctx,
        run_extra={"input": str(in_dir) if in_dir else None, **extra},
        workers=common.workers,
        shard_index=common.shard_index,
        num_shards=common.num_shards,
        quiet=common.quiet,
    )


def grasp(opts: GraspOptions, out: Path, common: Common) -> RunSummary:
    """Objects -> grasp shards (+ ``objects/`` and ``objects.parquet``)."""
    from hoigen.data.lock import fingerprint, folder_lock
    from hoigen.data.runner import clean_folder, resolve_split
    from hoigen.grasp.stage import grasp_stage, plan_grasp
    from hoigen.hand import load_hand

    hand = load_hand(opts.side, opts.mano_dir)  # fail early on a bad --mano-dir
    config = to_config(opts)
    rank, world = resolve_split(common.shard_index, common.num_shards)
    # locked before the objects are saved; the runner's lock inside reuses this one
    with folder_lock(Path(out), rank, world, fingerprint("grasp", common.seed, config)) as lock:
        clean_folder(Path(out), lock)
        tasks, assets = plan_grasp(opts, Path(out), common.seed)
        extra = {
            "hand_model": {"name": hand.name, "source": str(hand.source), "embedded": hand.is_embedded},
            "objects": [{"id": a.id, "category": a.category, "source": a.source} for a in assets],
            "objects_skipped": [s.to_dict() for s in getattr(assets, "skipped", [])],
        }
        summary = _run(grasp_stage, tasks, "grasp", out, common, config, None, extra)
        if summary.complete:  # the filter counts come from the whole index, written once every shard exists
            record_grasp_filter(Path(out), common.quiet)
        return summary


def record_grasp_filter(out: Path, quiet: bool = False) -> dict[str, Any]:
    """Add the grasp filter's counts and shortfall to ``run.json``; warn once per short object.

    Raises :class:`HoigenError` when no object yielded an accepted grasp."""
    import json

    from hoigen.data.atomic import atomic_write_bytes
    from hoigen.grasp.report import filter_line, filter_stats, no_grasp_error

    stats = filter_stats(out)
    run = read_run_json(out)
    run["grasp_filter"] = stats
    atomic_write_bytes(out / "run.json", json.dumps(run, indent=2, sort_keys=True, default=str).encode() + b"\n")
    for o in stats["short"]:
        console.print(
            f"warning: grasp: {o['object']}: {o['written']} of {o['wanted']} grasps passed the filters "
            "(written as they are; see run.json grasp_filter)"
        )
    if stats["objects"] and not stats["accepted"]:
        raise HoigenError(no_grasp_error(stats))
    info(filter_line(stats), quiet)
    return stats


def render(in_dir: Path, out: Path, opts: RenderOptions, common: Common) -> RunSummary:
    """Grasp shards -> render shards."""
    from hoigen.render.stage import OBJECTS_KEY, objects_dir_of, render_stage

    tasks = input_tasks(in_dir, ("grasp",))
    objects = objects_dir_of(in_dir)
    upstream = read_run_json(in_dir)
    config = {**to_config(opts), OBJECTS_KEY: str(objects), "mano_dir": upstream.get("config", {}).get("mano_dir")}
    return _run(
        render_stage,
        tasks,
        "render",
        out,
        common,
        config,
        Path(in_dir),
        {OBJECTS_KEY: str(objects), "hand_model": upstream.get("hand_model")},
    )


def synthesize(in_dir: Path, out: Path, opts: SynthOptions, common: Common) -> RunSummary:
    """Render shards -> synthesize shards (image.jpg, prompt.txt, gen.json added)."""
    from hoigen.diffusion.prompts import DEFAULT_PROMPTS, load_prompts
    from hoigen.diffusion.stage import pipeline_for, synth_stage
    from hoigen.render.stage import OBJECTS_KEY, objects_dir_of

    tasks = input_tasks(in_dir, ("render",))
    templates = load_prompts(opts.prompts) if opts.prompts is not None else list(DEFAULT_PROMPTS)
    size = synth_size(opts)
    config = {**to_config(opts), "size": size, "prompt_templates": templates}
    _, model_info = pipeline_for(config)  # fail early on missing weights
    return _run(
        synth_stage,
        tasks,
        "synthesize",
        out,
        common,
        config,
        Path(in_dir),
        {OBJECTS_KEY: str(objects_dir_of(in_dir)), "diffusion_model": model_info},
    )


def prepare_conditions(grasp_opts: GraspOptions, synth_opts: SynthOptions, work: Path, common: Common) -> Path:
    """Grasp and render into ``work`` for ``synthesize --objects``; returns the render folder.

    Conditions are rendered at the synthesis size (at least 256 px, so the annotations stay useful).
    """
    size = max(synth_size(synth_opts), 256)
    info(grasp(grasp_opts, work / "grasp", common).line(), common.quiet)
    info(render(work / "grasp", work / "render", RenderOptions(size=size), common).line(), common.quiet)
    return work / "render"


@dataclass
class ExportSummary:
    out_dir: Path
    shards_read: int
    samples_written: int = 0

    def line(self) -> str:
        return f"export: {self.samples_written} images from {self.shards_read} shards -> {self.out_dir}"


def export(in_dir: Path, out: Path, opts: ExportOptions, quiet: bool = False) -> ExportSummary:
    """Synthesize (or render) shards -> a NOCS CAMERA-style or BOP dataset folder.

    Every file is written atomically and deterministically, and ``run.json`` is written last as the
    mark of a complete export: a killed export leaves no ``run.json``, and rerunning the same
    command completes it with the same bytes (temporary copies left by the kill are deleted).
    """
    from hoigen.data.atomic import remove_stale_tmp
    from hoigen.data.faults import kill_point
    from hoigen.data.index import RUN_FILE, write_run_json
    from hoigen.data.lock import fingerprint, folder_lock, remove_dead_locks
    from hoigen.export.bop import export_bop
    from hoigen.export.nocs import export_nocs
    from hoigen.objects import read_objects
    from hoigen.render.stage import objects_dir_of

    writers = {"nocs": export_nocs, "bop": export_bop}  # ExportOptions has checked the format
    tasks = input_tasks(in_dir, ("synthesize", "render"))
    expected = read_run_json(in_dir).get("shards")
    if isinstance(expected, int) and len(tasks) < expected:
        # the image plan (scenes, splits) depends on every key: a partial export would not match the full one
        raise HoigenError(
            f"{in_dir}: {expected - len(tasks)} of {expected} shards are missing; finish that stage first "
            "(rerun its command, or the missing ranks) and then export"
        )
    keys = read_index(in_dir).column("key").to_pylist()
    objects = read_objects(objects_dir_of(in_dir))
    out = Path(out)
    config = {**to_config(opts)}
    with folder_lock(out, 0, 1, fingerprint("export", 0, config)):
        remove_dead_locks(out)
        remove_stale_tmp(out, recursive=True)
        (out / RUN_FILE).unlink(missing_ok=True)  # back only when the export is complete
        summary = ExportSummary(out, len(tasks))
        with make_progress(quiet) as progress:
            bar = progress.add_task("export", total=len(keys), status="")

            def tick() -> None:
                summary.samples_written += 1
                progress.advance(bar)

            samples = (s for t in tasks for s in t.samples())
            writers[opts.format](
                samples, keys, out, objects, split=opts.split, val_fraction=opts.val_fraction, on_sample=tick
            )
        if opts.mix is not None:
            from hoigen.export.mix import mix_lists

            mixed = mix_lists(out, opts.mix, opts.ratio, opts.mix_mode, opts.split)
            info(f"mixed list: {mixed}", quiet)
        kill_point("export-done")
        write_run_json(out, "export", config, 0, {"input": str(in_dir)})
    return summary


def eval_pose(pred: Path, gt: Path) -> dict[str, Any]:
    """NOCS metrics (mAP, percent) of a prediction pose file against a ground-truth pose file."""
    from hoigen.pose.files import read_pose_file
    from hoigen.pose.metrics import evaluate

    return evaluate(read_pose_file(pred), read_pose_file(gt))


def train(in_dir: Path, out: Path, opts: TrainOptions, common: Common) -> dict[str, Any]:
    """Shards with images -> a fine-tuned diffusers pipeline folder."""
    from hoigen.diffusion.train_data import train_from_shards

    tasks = input_tasks(in_dir, ("synthesize", "render", "ingest"))
    stats = train_from_shards([t.source for t in tasks], Path(out), opts, common.seed, common.quiet)
    info(
        f"train: {stats['steps']} steps, loss {stats['first_loss']:.4f} -> {stats['last_loss']:.4f} -> {out}",
        common.quiet or stats.get("process_index", 0) != 0,
    )
    return stats


def inspect(folder: Path, sheet: Path | None = None, rows: int = 12) -> Path:
    """Print counts and the head of the index; write a contact sheet."""
    from rich.table import Table

    from hoigen.preview import contact_sheet, spread_samples

    folder = Path(folder)
    shards = list_shards(folder)
    if not shards:
        raise HoigenError(f"{folder}: no shards (shard-*.tar) found; point at a stage's output folder")
    table = read_index(folder)
    run = read_run_json(folder)
    console.print(f"[bold]{folder}[/]: stage {run.get('stage', '?')}, {len(shards)} shards, {table.num_rows} samples")
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
    fields = sorted({k for s in read_shard(shards[0], decode=False) for k in s if not k.startswith("__")})
    console.print("fields: " + ", ".join(fields))
    path = contact_sheet(spread_samples(folder, rows), sheet or folder / "contact_sheet.png", max_rows=rows)
    console.print(f"contact sheet: {path}")
    return path


def run_recipe(recipe: Recipe, quiet: bool = False) -> None:
    """Run every stage a recipe names, in order, into ``recipe.out/<stage>``."""
    out = Path(recipe.out)
    common = Common(seed=recipe.seed, workers=recipe.workers, quiet=quiet)
    last = None
    if recipe.grasp is not None:
        info(grasp(recipe.grasp, out / "grasp", common).line(), quiet)
        last = out / "grasp"
    if recipe.render is not None:
        info(render(out / "grasp", out / "render", recipe.render, common).line(), quiet)
        last = out / "render"
    if recipe.synthesize is not None:
        info(synthesize(out / "render", out / "synth", recipe.synthesize, common).line(), quiet)
        last = out / "synth"
    if recipe.export is not None:
        info(export(last, out / "nocs", recipe.export, quiet).line(), quiet)
    if recipe.train is not None:
        source = recipe.train.data or last
        if source is None:
            raise HoigenError("recipe: the train section needs data: SHARDS (or a grasp/render/synthesize section)")
        train(source, out / "model", recipe.train, common)
    if last is not None and last != out / "grasp":
        from hoigen.preview import contact_sheet, spread_samples

        sheet = contact_sheet(spread_samples(last, 12), out / "contact_sheet.png")
        info(f"contact sheet: {sheet}", quiet)
