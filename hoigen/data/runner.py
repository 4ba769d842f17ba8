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
from hoigen.data.contract import ANN
from hoigen.data.faults import kill_point
from hoigen.data.index import INDEX_FILE, PARTS_DIR, build_index, write_part, write_run_json
from hoigen.data.lock import FolderLock, fingerprint, folder_lock, remove_dead_locks
from hoigen.data.progress import info, make_progress
from hoigen.data.schema import Sample, derive_seed, index_row
from hoigen.data.shards import ShardWriter, read_shard, remove_partial, shard_name
from hoigen.errors import HoigenError


@dataclass(frozen=True)
class Task:
    """One unit of work: output shard ``index`` made from ``source`` alone."""

    index: int
    source: Path | tuple[Sample, ...]
    expects: str = "grasp"  # the stage whose ann.json fields input samples must have (contract.ann_fields)

    def samples(self) -> Iterator[Sample]:
        """The input samples; a shard's samples are checked against the contract's base fields first."""
        if isinstance(self.source, Path):
            for sample in read_shard(self.source):
                check_input(sample, self.source, self.expects)
                yield sample
        else:
            yield from (dict(s) for s in self.source)


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
    """What a stage function knows besides its samples."""

    stage: str
    seed: int
    config: dict[str, Any]
    out_dir: Path
    in_dir: Path | None = None
    shard: int = 0

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

    def line(self) -> str:
        part = f" (rank {self.rank}/{self.world})" if self.world > 1 else ""
        waiting = "" if self.complete else "; index.parquet follows when the last rank finishes (or hoigen merge)"
        return (
            f"{self.stage}: {self.shards_written} shards written, {self.shards_skipped} already done"
            f"{part}, {self.samples_written} samples -> {self.out_dir}{waiting}"
        )


def resolve_split(shard_index: int | None = None, num_shards: int | None = None) -> tuple[int, int]:
    """(rank, world): flags first, then torchrun, then Slurm array variables, else (0, 1)."""
    if num_shards is not None or shard_index is not None:
        rank, world = shard_index or 0, num_shards or 1
    elif "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    elif "SLURM_ARRAY_TASK_COUNT" in os.environ:
        first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        rank = int(os.environ["SLURM_ARRAY_TASK_ID"]) - first
        world = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    else:
        rank, world = 0, 1
    if world < 1 or not 0 <= rank < world:
        raise HoigenError(f"shard split rank {rank} of {world} is invalid; use 0 <= --shard-index < --num-shards")
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
        write_part(ctx.out_dir, name, rows)
        kill_point("shard-part")
        writer.publish()
    except BaseException:
        writer.abort()
        raise
    return writer.count


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
) -> RunSummary:
    """Run ``fn`` over ``tasks`` into ``ctx.out_dir`` with resume, rank split, local workers and a lock."""
    out_dir = ctx.out_dir
    rank, world = resolve_split(shard_index, num_shards)
    with folder_lock(out_dir, rank, world, fingerprint(ctx.stage, ctx.seed, ctx.config)) as lock:
        clean_folder(out_dir, lock)
        mine = [t for t in tasks if t.index % world == rank]
        for t in mine:
            remove_partial(out_dir, t.index)
        todo = [t for t in mine if not (out_dir / shard_name(t.index)).exists()]
        summary = RunSummary(
            ctx.stage, out_dir, len(tasks), len(mine), shards_skipped=len(mine) - len(todo), rank=rank, world=world
        )
        write_run_json(out_dir, ctx.stage, ctx.config, ctx.seed, {"shards": len(tasks), **(run_extra or {})})
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
