"""The one stage runner: output shard i from input shard i, resume, workers and rank splits.

A stage is a function ``fn(samples, ctx) -> samples``. The runner gives it the samples of one input
unit (an input shard, or for grasp a group of objects), writes what it yields to shard i under a
temporary name, writes the shard's index part, then publishes the shard. A shard that exists is
finished, so a rerun skips it (resume). Shards are split between processes by
``shard % world == rank`` where rank/world come from ``--shard-index/--num-shards``, torchrun's
``RANK``/``WORLD_SIZE`` or Slurm's ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``; ``workers``
runs local processes. Seeds derive from the run seed and names, never from processing order, so
every split gives the same bytes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hoigen.data.index import build_index, shard_rows, write_part, write_run_json
from hoigen.data.progress import make_progress
from hoigen.data.schema import Sample, derive_seed
from hoigen.data.shards import ShardWriter, read_shard, remove_partial, shard_name
from hoigen.errors import HoigenError


@dataclass(frozen=True)
class Task:
    """One unit of work: output shard ``index`` made from ``source`` alone."""

    index: int
    source: Path | tuple[Sample, ...]

    def samples(self) -> Iterator[Sample]:
        if isinstance(self.source, Path):
            yield from read_shard(self.source)
        else:
            yield from (dict(s) for s in self.source)


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

    def line(self) -> str:
        part = f" (rank {self.rank}/{self.world})" if self.world > 1 else ""
        return (
            f"{self.stage}: {self.shards_written} shards written, {self.shards_skipped} already done"
            f"{part}, {self.samples_written} samples -> {self.out_dir}"
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
    """Make output shard ``task.index``: run ``fn``, write the shard and its index part."""
    ctx = replace(ctx, shard=task.index)
    name = shard_name(task.index)
    out_path = ctx.out_dir / name
    remove_partial(ctx.out_dir, task.index)
    written: list[Sample] = []
    with ShardWriter(out_path) as writer:
        for sample in fn(task.samples(), ctx):
            writer.write(sample)
            written.append(
                {"__key__": sample["__key__"], **{k: sample[k] for k in ("ann.json", "prompt.txt") if k in sample}}
            )
            if on_sample is not None:
                on_sample()
        write_part(ctx.out_dir, name, shard_rows(written, name))
    return writer.count


def _worker(fn: StageFn, task: Task, ctx: StageContext) -> int:
    return run_task(fn, task, ctx)


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
    """Run ``fn`` over ``tasks`` into ``ctx.out_dir`` with resume, rank split and local workers."""
    out_dir = ctx.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = resolve_split(shard_index, num_shards)
    mine = [t for t in tasks if t.index % world == rank]
    todo = [t for t in mine if not (out_dir / shard_name(t.index)).exists()]
    summary = RunSummary(
        ctx.stage, out_dir, len(tasks), len(mine), shards_skipped=len(mine) - len(todo), rank=rank, world=world
    )
    write_run_json(out_dir, ctx.stage, ctx.config, ctx.seed, {"shards": len(tasks), **(run_extra or {})})

    with make_progress(quiet) as progress:
        bar = progress.add_task(ctx.stage, total=len(todo), status="0 samples")

        def count_sample() -> None:
            summary.samples_written += 1
            progress.update(bar, status=f"{summary.samples_written} samples")

        if workers <= 1 or len(todo) <= 1:
            for task in todo:
                run_task(fn, task, ctx, on_sample=count_sample)
                summary.shards_written += 1
                progress.advance(bar)
        else:
            mp = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp) as pool:
                futures = [pool.submit(_worker, fn, task, ctx) for task in todo]
                for future in as_completed(futures):
                    summary.samples_written += future.result()
                    summary.shards_written += 1
                    progress.update(bar, advance=1, status=f"{summary.samples_written} samples")
    build_index(out_dir)
    return summary
