"""The one stage runner: output shard i from input shard i, resume, workers and rank splits.

A stage is a function ``fn(samples, ctx) -> samples``. The runner gives it the samples of one input
unit (an input shard, or for grasp a group of objects), writes what it yields to shard i under a
temporary name, writes the shard's index part, then publishes the shard. A shard that exists is
finished, so a rerun skips it (resume). Shards are split between processes by
``shard % world == rank`` where rank/world come from ``--shard-index/--num-shards``, torchrun's
``RANK``/``WORLD_SIZE`` or Slurm's ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``; ``workers``
runs local processes. Seeds derive from the run seed and names, never from processing order, so
every split gives the same bytes.

Crash safety: a shard is written under a temporary name, synced, its index part written, and only
then renamed, so a shard that exists is complete and indexed. A run holds its rank's lock on the
folder (:mod:`hoigen.data.lock`), deletes temporary files a killed run left for its shards, and
skips finished shards; ``index.parquet`` is joined only when every shard of the stage exists, by
whichever rank finishes last (the same bytes whoever writes it), or by ``hoigen merge``. SIGINT or
SIGTERM drops the shard in hand (workers finish theirs) and the CLI says to rerun the same command.

Workers are forked from a forkserver that has imported the stage's module once (spawned workers
paid the imports, seconds, each); a worker exits when the process that started it dies.

Every stage, ingest and export included, is a :class:`Stage` that :func:`run` drives: ``plan`` (check
the input and list the tasks, before anything is written), ``prepare`` (under the folder lock: e.g.
save the objects), then either ``transform`` per shard (a shard stage) or ``consume`` over all tasks
into one folder (a sink stage: export, whose ``run.json`` is written last as its completion mark),
then ``finalize``.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hoigen.data.atomic import remove_stale_tmp
from hoigen.data.contract import ANN, INDEX_FILE, RUN_FILE, read_run_json
from hoigen.data.faults import kill_point
from hoigen.data.identity import (
    check_not_input,
    check_out,
    fingerprint_of,
    identity,
    input_fingerprint,
    remove_own_files,
    write_start,
)
from hoigen.data.index import (
    PARTS_DIR,
    build_index,
    file_checksum,
    part_checksum,
    part_path,
    shard_problem,
    write_part,
    write_run_json,
)
from hoigen.data.lock import FolderLock, fingerprint, folder_lock, remove_dead_locks
from hoigen.data.progress import info, make_progress, warn
from hoigen.data.schema import Sample, derive_seed, index_row
from hoigen.data.shards import ShardWriter, list_shards, read_shard, remove_partial, shard_index, shard_name
from hoigen.errors import HoigenError
from hoigen.options import Common, UsageError
from hoigen.options import record as options_record


@dataclass(frozen=True)
class Task:
    """One unit of work: output shard ``index`` made from ``source`` alone."""

    index: int
    source: Path | tuple[Sample, ...]
    expects: str = "grasp"  # the stage whose ann.json fields input samples must have (contract.ann_fields)
    checksum: tuple[int, str] | None = None  # an input shard's (size, sha256) from its folder's index part

    def samples(self) -> Iterator[Sample]:
        """The input samples; a shard is checked against its checksum, its samples against the contract."""
        if isinstance(self.source, Path):
            if self.checksum is not None:
                verify_input(self.source, self.checksum)
            for sample in read_shard(self.source):
                check_input(sample, self.source, self.expects)
                yield sample
        else:
            yield from (dict(s) for s in self.source)


def input_tasks(in_dir: Path, produced_by: tuple[str, ...]) -> list[Task]:
    """One task per finished input shard; a clear error when the folder is not what we need."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise HoigenError(f"{in_dir}: input folder does not exist; run hoigen {produced_by[0]} first or pass --in")
    shards = list_shards(in_dir)
    if not shards:
        raise HoigenError(f"{in_dir}: no shards (shard-*.tar) found; run hoigen {produced_by[0]} into it first")
    run = read_input_run_json(in_dir)
    if not run:
        raise HoigenError(
            f"{in_dir / RUN_FILE}: missing, so the folder's shards cannot be verified; rerun the hoigen "
            f"{produced_by[0]} command that wrote {in_dir} (or point --in at a stage's output folder)"
        )
    stage = run.get("stage")
    if stage is not None and stage not in produced_by:
        raise HoigenError(f"{in_dir}: holds '{stage}' output, but this stage reads {' or '.join(produced_by)} output")
    expected = run.get("shards")
    if isinstance(expected, int) and not isinstance(expected, bool):
        have = {shard_index(p) for p in shards}
        missing = [shard_name(i) for i in range(expected) if i not in have]
        extra = sorted(shard_name(i) for i in have if not 0 <= i < expected)
        if missing:
            raise HoigenError(
                f"{in_dir}: {len(missing)} of {expected} shards are missing; finish that stage first (rerun its "
                f"command, or the missing ranks: {_names(missing)}), then rerun this one"
            )
        if extra:
            raise HoigenError(
                f"{in_dir}: {len(extra)} shards beyond the {expected} its run.json records ({_names(extra)}); "
                "they belong to no run: delete them, or rerun the stage that wrote the folder with --overwrite"
            )
    expects = stage if stage in ("grasp", "render", "synthesize", "ingest") else "grasp"  # its ann.json schema
    tasks = []
    for p in shards:
        checksum = part_checksum(part_path(in_dir, p.name))
        if checksum is None and run.get("fingerprint"):  # folders of this version record one for every shard
            raise HoigenError(
                f"{part_path(in_dir, p.name)}: missing or damaged index part, so {p.name} cannot be verified; "
                f"rerun the stage that wrote {in_dir} (the same command remakes both)"
            )
        tasks.append(Task(shard_index(p), p, expects, checksum))
    return tasks


def _names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def read_input_run_json(in_dir: Path) -> dict[str, Any]:
    """An input folder's run.json ({} when absent); a damaged one is one line."""
    try:
        run = read_run_json(in_dir)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise HoigenError(
            f"{in_dir / RUN_FILE}: unreadable ({' '.join(str(exc).split())}); rerun the stage that wrote {in_dir}"
        ) from None
    if not isinstance(run, dict):
        raise HoigenError(f"{in_dir / RUN_FILE}: not a JSON object; rerun the stage that wrote {in_dir}")
    return run


def verify_input(shard: Path, checksum: tuple[int, str]) -> None:
    """A one-line error when an input shard's bytes differ from what its folder's index part records."""
    try:
        size, sha = file_checksum(shard)
    except OSError as exc:
        raise HoigenError(f"{shard}: cannot read ({exc.strerror}); rerun the stage that wrote it") from None
    if (size, sha) != tuple(checksum):
        what = f"{size} bytes, the index part says {checksum[0]}" if size != checksum[0] else "sha256 differs"
        raise HoigenError(
            f"{shard}: truncated or corrupt shard (changed since it was written: {what}); delete it and rerun "
            "the stage that wrote it"
        )


def check_input(sample: Sample, shard: Path, expects: str) -> None:
    """A one-line error for an input sample whose ``ann.json`` lacks a field ``expects``'s samples hold
    (``"grasp"``, ``"render"``, ...: the stage whose output the consuming stage reads) or has a wrong shape."""
    if ANN not in sample:
        return
    from hoigen.data.validate import check_ann

    for problem in check_ann(sample[ANN], sample["__key__"], expects):
        raise HoigenError(
            f"{shard}: {sample['__key__']}: {problem}; the input shard is damaged: delete it and rerun the stage "
            f"that wrote it (hoigen validate {shard.parent} lists every problem)"
        )


@dataclass
class StageContext:
    """What a stage function knows besides its samples: its typed ``options`` (the stage's options
    dataclass) and ``inputs`` (a small typed record of what was resolved from the input folders)."""

    stage: str
    seed: int
    options: Any
    out_dir: Path
    in_dir: Path | None = None
    shard: int = 0
    inputs: Any = None

    def rng(self, *names: Any) -> np.random.Generator:
        """A generator seeded from the run seed, the stage and ``names`` (e.g. a sample key)."""
        return np.random.default_rng(derive_seed(self.seed, self.stage, *names))


StageFn = Callable[[Iterable[Sample], StageContext], Iterable[Sample]]


@dataclass
class RunSummary:
    stage: str
    out_dir: Path
    shards_total: int
    shards_mine: int
    shards_written: int = 0
    shards_skipped: int = 0
    samples_written: int = 0
    rank: int = 0
    world: int = 1
    failed: list[str] = field(default_factory=list)
    complete: bool = True
    message: str | None = None  # a stage's own summary line (export, train)
    stats: dict[str, Any] = field(default_factory=dict)  # stage-specific figures (train: steps and losses)

    def line(self) -> str:
        if self.message is not None:
            return self.message
        part = f" (rank {self.rank}/{self.world})" if self.world > 1 else ""
        waiting = "" if self.complete else "; index.parquet follows when the last rank finishes (or hoigen merge)"
        return (
            f"{self.stage}: {self.shards_written} shards written, {self.shards_skipped} already done"
            f"{part}, {self.samples_written} samples -> {self.out_dir}{waiting}"
        )


def _env_int(name: str, default: str | None = None) -> int:
    """An integer environment variable (a usage error, naming it, when it is not one)."""
    text = os.environ.get(name, default)
    try:
        return int(str(text).strip())
    except ValueError:
        raise UsageError(
            f"{name}={text!r} is not an integer; fix or unset it (or pass --shard-index/--num-shards)"
        ) from None


def resolve_split(shard_index: int | None = None, num_shards: int | None = None) -> tuple[int, int]:
    """(rank, world): flags first, then torchrun, then Slurm array variables, else (0, 1)."""
    if num_shards is not None or shard_index is not None:
        rank, world = shard_index or 0, num_shards or 1
    elif "WORLD_SIZE" in os.environ:
        rank, world = _env_int("RANK", "0"), _env_int("WORLD_SIZE")
    elif "SLURM_ARRAY_TASK_COUNT" in os.environ:
        first = _env_int("SLURM_ARRAY_TASK_MIN", "0")
        rank = _env_int("SLURM_ARRAY_TASK_ID") - first
        world = _env_int("SLURM_ARRAY_TASK_COUNT")
    else:
        rank, world = 0, 1
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"shard split rank {rank} of {world} is invalid; use 0 <= --shard-index < --num-shards")
    return rank, world


def run_task(fn: StageFn, task: Task, ctx: StageContext, on_sample: Callable[[], None] | None = None) -> int:
    """Make output shard ``task.index``: run ``fn``, write the shard and its index part, then publish."""
    ctx = replace(ctx, shard=task.index)
    name = shard_name(task.index)
    remove_partial(ctx.out_dir, task.index)
    rows: list[dict[str, Any]] = []  # the shard's index rows (a few scalars each, not the samples)
    writer = ShardWriter(ctx.out_dir / name)
    try:
        for sample in fn(task.samples(), ctx):
            writer.write(sample)
            rows.append(index_row(sample, name))
            if on_sample is not None:
                on_sample()
        writer.finish()
        write_part(ctx.out_dir, name, rows, file_checksum(writer.tmp))
        kill_point("shard-part")
        writer.publish()
    except BaseException as exc:
        writer.abort()
        failure = resource_error(exc, ctx)
        if failure is not None:
            raise failure from None
        raise
    return writer.count


def resource_error(exc: BaseException, ctx: StageContext) -> HoigenError | None:
    """A one-line error for a run that asked for more than the machine gives (memory, a GL framebuffer),
    naming the image size; None for any other exception."""
    kind = type(exc)
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        what = "out of memory"
    elif kind.__module__.split(".")[0] == "OpenGL" or (
        kind.__module__ == "cv2" and any(w in text.lower() for w in ("memory", "alloc"))
    ):
        what = f"the {'GL renderer' if kind.__module__.startswith('OpenGL') else 'image library'} failed"
    else:
        return None
    size = getattr(ctx.options, "size", None)
    ss = getattr(ctx.options, "supersample", 1) or 1
    at = f" at --size {size}" + (f" x --supersample {ss}" if ss > 1 else "") if size else ""
    return HoigenError(
        f"{ctx.out_dir / shard_name(ctx.shard)}: {what}{at} ({kind.__name__}); finished shards are kept; "
        "use a smaller --size (or --supersample, --batch-size, --workers) in another --out, or --overwrite"
    )


def _die_with_parent(main_pid: int) -> None:
    """Worker initializer: ignore Ctrl-C/SIGTERM (the main process decides) and exit when it dies.

    Workers are children of the forkserver, not of the main process, and pool workers hold both ends
    of their task queue, so nothing else would tell them: a SIGKILLed run would leave them idle forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_when_gone, args=(main_pid,), daemon=True).start()


def _exit_when_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # readable once the process has exited
        select.select([fd], [], [])
    except (AttributeError, OSError):  # no pidfd here, or the process is already gone
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(1.0)
    os._exit(1)


def _worker(fn: StageFn, task: Task, ctx: StageContext) -> int:
    return run_task(fn, task, ctx)


START_METHOD_ENV = "HOIGEN_WORKER_START"  # forkserver (default) or spawn; for benchmarks


def worker_context(fn: StageFn) -> multiprocessing.context.BaseContext:
    """A forkserver context that imports ``fn``'s module once in the server (spawn where there is none)."""
    method = os.environ.get(START_METHOD_ENV, "forkserver")
    try:
        mp = multiprocessing.get_context(method)
    except ValueError:
        return multiprocessing.get_context("spawn")
    if method != "forkserver":
        return mp
    mp.set_forkserver_preload(["hoigen.data.runner", fn.__module__])
    return mp


def shards_complete(out_dir: Path, tasks: Sequence[Task]) -> bool:
    return all((out_dir / shard_name(t.index)).exists() for t in tasks)


def _run_pool(fn: StageFn, todo: list[Task], ctx: StageContext, workers: int, done: Callable[[int], None]) -> None:
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=worker_context(fn), initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    try:
        futures = [pool.submit(_worker, fn, task, ctx) for task in todo]
        for future in as_completed(futures):
            done(future.result())
    except BrokenProcessPool:
        pool.shutdown(wait=True, cancel_futures=True)
        raise HoigenError(
            f"{ctx.out_dir}: a worker process died (killed, or out of memory); finished shards are kept; "
            "rerun the same command to resume (with fewer --workers if memory ran out)"
        ) from None
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # shards in hand finish; the rest are not started
        raise
    pool.shutdown(wait=True)


def drop_damaged(shard: Path, quiet: bool = False) -> bool:
    """Resume: delete a finished shard whose bytes no longer match its index part (it is made again)."""
    if not shard.exists():
        return False
    problem = shard_problem(shard)
    if problem is None:
        return False
    warn(f"{shard}: damaged since it was written ({problem}); making it again")
    shard.unlink(missing_ok=True)
    part_path(shard.parent, shard.name).unlink(missing_ok=True)
    return True


def clean_folder(out_dir: Path, lock: FolderLock) -> None:
    """Delete locks of dead runs and, unless another rank is live, temporary files they left."""
    remove_dead_locks(out_dir)
    if not lock.others_alive():  # shared files' temporary copies may belong to a live rank
        for sub in (out_dir, out_dir / PARTS_DIR, out_dir / "objects"):
            remove_stale_tmp(sub)


def run_stage(
    fn: StageFn,
    tasks: Sequence[Task],
    ctx: StageContext,
    *,
    run_extra: dict[str, Any] | None = None,
    workers: int = 1,
    shard_index: int | None = None,
    num_shards: int | None = None,
    quiet: bool = False,
    record: dict[str, Any] | None = None,
    prepare: Callable[[], None] | None = None,
) -> RunSummary:
    """Run ``fn`` over ``tasks`` into ``ctx.out_dir`` with resume, rank split, local workers and a lock.

    ``record`` is the options as ``run.json`` shows them (and what makes ranks one run; default
    ``ctx.options`` when it is a dict); ``prepare`` runs under the lock after the folder is cleaned."""
    out_dir = ctx.out_dir
    if record is None:
        record = ctx.options if isinstance(ctx.options, dict) else options_record(ctx.options)
    rank, world = resolve_split(shard_index, num_shards)
    with folder_lock(out_dir, rank, world, fingerprint(ctx.stage, ctx.seed, record)) as lock:
        clean_folder(out_dir, lock)
        if prepare is not None:
            prepare()
        mine = [t for t in tasks if t.index % world == rank]
        for t in mine:
            remove_partial(out_dir, t.index)
            drop_damaged(out_dir / shard_name(t.index), quiet)
        todo = [t for t in mine if not (out_dir / shard_name(t.index)).exists()]
        summary = RunSummary(
            ctx.stage, out_dir, len(tasks), len(mine), shards_skipped=len(mine) - len(todo), rank=rank, world=world
        )
        write_run_json(out_dir, ctx.stage, record, ctx.seed, {"shards": len(tasks), **(run_extra or {})})
        if todo and (out_dir / INDEX_FILE).exists():
            (out_dir / INDEX_FILE).unlink(missing_ok=True)  # stale until every shard is back

        with make_progress(quiet) as progress:
            bar = progress.add_task(ctx.stage, total=len(todo), status="0 samples")

            def count_sample() -> None:
                summary.samples_written += 1
                progress.update(bar, status=f"{summary.samples_written} samples")

            def shard_done(samples: int) -> None:
                summary.samples_written += samples
                summary.shards_written += 1
                progress.update(bar, advance=1, status=f"{summary.samples_written} samples")

            if workers <= 1 or len(todo) <= 1:
                for task in todo:
                    run_task(fn, task, ctx, on_sample=count_sample)
                    shard_done(0)
            else:
                _run_pool(fn, todo, ctx, workers, shard_done)
        summary.complete = shards_complete(out_dir, tasks)
        if summary.complete:
            kill_point("index")
            build_index(out_dir)
        elif world > 1:
            info(f"{ctx.stage}: rank {rank} of {world} done; waiting for the other ranks' shards", quiet)
    return summary


# --- the stage protocol ---------------------------------------------------------------------------


@dataclass
class Plan:
    """What a stage's ``plan`` found: the tasks, and how ``run.json`` records the run."""

    tasks: list[Task]
    options: Any  # the typed options the stage functions read (ctx.options)
    record: dict[str, Any]  # run.json's "config", also the run's fingerprint
    in_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more run.json fields
    inputs: Any = None  # ctx.inputs
    seed: int | None = None  # None: the run seed (export records 0)
    total: int | None = None  # samples expected (a sink's progress bar)


class Stage:
    """One stage of the chain; :func:`run` drives it. Subclasses set ``name`` and either ``transform``
    (a shard stage: output shard i from task i) or ``consume`` (a sink stage: one folder from all tasks)."""

    name: str = ""
    transform: StageFn | None = None  # a module-level function (it is sent to worker processes)
    # folders of counts kept beside the shards (one file per shard or per object), summed into
    # run.json by :meth:`tally`; ``hoigen merge`` copies them with the shards, then tallies again
    sidecars: tuple[str, ...] = ()

    def plan(self, out_dir: Path, common: Common) -> Plan:
        """Check the input and list the tasks; writes nothing (errors here leave no trace)."""
        raise NotImplementedError

    def prepare(self, out_dir: Path, plan: Plan) -> None:
        """Under the folder lock, after cleaning and before any shard: e.g. save the objects."""

    def consume(self, tasks: list[Task], ctx: StageContext, tick: Callable[[], None]) -> None:
        """A sink stage's work: read every task's samples and write the folder (``tick`` per sample)."""
        raise NotImplementedError

    def finalize(self, out_dir: Path, plan: Plan, summary: RunSummary, common: Common) -> None:
        """After the run (still under the lock), e.g. add figures to ``run.json`` or set ``summary.message``.

        The default tallies the sidecar counts once every shard exists."""
        if summary.complete:
            self.tally(out_dir, common.quiet)

    @classmethod
    def tally(cls, out_dir: Path, quiet: bool = False) -> None:
        """Sum the :attr:`sidecars` of every shard in ``out_dir`` into its ``run.json`` (and say so)."""


# the stage classes by run.json's ``stage`` name, imported on use (merge needs only the one it joins)
STAGE_CLASSES = {
    "grasp": "hoigen.grasp.stage:GraspStage",
    "render": "hoigen.render.stage:RenderStage",
    "synthesize": "hoigen.diffusion.stage:SynthStage",
    "export": "hoigen.export.stage:ExportStage",
}


def stage_class(name: str) -> type[Stage] | None:
    """The :class:`Stage` subclass that writes ``run.json`` records of stage ``name`` (None: unknown)."""
    import importlib

    path = STAGE_CLASSES.get(name)
    if path is None:
        return None
    module, cls = path.split(":")
    return getattr(importlib.import_module(module), cls)


def run(stage: Stage, out_dir: Path, common: Common | None = None) -> RunSummary:
    """Run ``stage`` into ``out_dir``: plan, lock, clean, prepare, shards (or the sink), finalize."""
    common = common or Common()
    out_dir = Path(out_dir)
    check_not_input(out_dir, getattr(stage, "in_dir", None))
    plan = stage.plan(out_dir, common)
    seed = common.seed if plan.seed is None else plan.seed
    ident = identity(stage.name, seed, plan.record, input_fingerprint(plan.in_dir))
    run_fp = fingerprint_of(ident)
    stale = check_out(out_dir, plan.in_dir, ident, common.overwrite)  # before anything is written
    ctx = StageContext(stage.name, seed, plan.options, out_dir, in_dir=plan.in_dir, inputs=plan.inputs)
    extra = {
        "input": str(plan.in_dir) if plan.in_dir else None, "fingerprint": run_fp,
        "input_fingerprint": ident["input_fingerprint"], **plan.extra,
    }  # fmt: skip
    if stage.transform is None:
        with folder_lock(out_dir, 0, 1, run_fp):
            if stale:
                remove_own_files(out_dir, stage.name)
                info(f"{stage.name}: --overwrite: removed the earlier run's files from {out_dir}", common.quiet)
            write_start(out_dir, ident, run_fp)
            return _run_sink(stage, plan, ctx, extra, common)
    rank, world = resolve_split(common.shard_index, common.num_shards)
    with folder_lock(out_dir, rank, world, run_fp) as lock:
        if stale and not lock.others_alive():  # a live rank of this run has already started afresh
            remove_own_files(out_dir, stage.name)
            info(f"{stage.name}: --overwrite: removed the earlier run's files from {out_dir}", common.quiet)
        summary = run_stage(
            stage.transform, plan.tasks, ctx, run_extra=extra, workers=common.workers, shard_index=rank,
            num_shards=world, quiet=common.quiet, record=plan.record, prepare=lambda: stage.prepare(out_dir, plan),
        )  # fmt: skip
        stage.finalize(out_dir, plan, summary, common)
    return summary


def _run_sink(stage: Stage, plan: Plan, ctx: StageContext, extra: dict[str, Any], common: Common) -> RunSummary:
    """A sink's run: every file is written atomically and ``run.json`` last, as the mark of a complete
    folder; a killed run leaves no ``run.json`` and a rerun deletes the temporary copies it left."""
    out_dir = ctx.out_dir
    remove_dead_locks(out_dir)
    remove_stale_tmp(out_dir, recursive=True)
    (out_dir / RUN_FILE).unlink(missing_ok=True)  # back only when the folder is complete
    stage.prepare(out_dir, plan)
    summary = RunSummary(stage.name, out_dir, len(plan.tasks), len(plan.tasks))
    with make_progress(common.quiet) as progress:
        bar = progress.add_task(stage.name, total=plan.total, status="")

        def tick() -> None:
            summary.samples_written += 1
            progress.advance(bar)

        stage.consume(plan.tasks, ctx, tick)
    stage.finalize(out_dir, plan, summary, common)
    kill_point(f"{stage.name}-done")
    write_run_json(out_dir, stage.name, plan.record, ctx.seed, extra)
    return summary
