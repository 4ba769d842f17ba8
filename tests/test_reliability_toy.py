"""A cheap stand-in stage shared by tests/test_reliability.py and the subprocesses it kills (this file
imports nothing heavy, so a killed run costs little). No tests here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from hoigen.data.runner import StageContext, Task, run_stage
from hoigen.data.schema import sample_key

ARGV = ["hoigen", "toy"]  # what run.json records as the command, in-process and in subprocesses


def toy_stage(samples, ctx: StageContext):
    for sample in samples:
        rng = ctx.rng(sample["__key__"])
        obj = {"id": sample["__key__"].split("_")[0], "category": "toy"}
        yield {
            "__key__": sample["__key__"],
            "ann.json": {"object": obj, "v": float(rng.random())},
            "depth.png": rng.integers(0, 2**16, (8, 8), dtype=np.uint16),
        }


def toy_tasks(n: int = 5, per: int = 3) -> list[Task]:
    return [Task(i, tuple({"__key__": sample_key(f"obj-{i}", g, 0)} for g in range(per))) for i in range(n)]


def run_toy(out: Path, seed: int = 7, tasks: list[Task] | None = None, **kw):
    """The toy stage over 5 shards of 3 samples into ``out``."""
    argv, sys.argv = sys.argv, ARGV
    try:
        ctx = StageContext(stage="toy", seed=seed, options={"n": 5}, out_dir=Path(out))
        return run_stage(toy_stage, toy_tasks() if tasks is None else tasks, ctx, quiet=True, **kw)
    finally:
        sys.argv = argv


def slow_stage(samples, ctx: StageContext):
    """Records its worker's pid beside the output, then takes its time (for kill tests)."""
    import os
    import time

    (Path(ctx.out_dir).parent / f"pid-{os.getpid()}").touch()
    for sample in samples:
        time.sleep(0.5)
        yield {"__key__": sample["__key__"], "ann.json": {"shard": ctx.shard}}


def run_slow(out: Path, workers: int = 2):
    argv, sys.argv = sys.argv, ARGV
    try:
        ctx = StageContext(stage="slow", seed=0, options={}, out_dir=Path(out))
        return run_stage(slow_stage, toy_tasks(6, 2), ctx, quiet=True, workers=workers)
    finally:
        sys.argv = argv
