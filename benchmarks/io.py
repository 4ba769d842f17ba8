"""The I/O rows of ``make bench`` (issue 22): CPU seconds per sample of every stage on the tiny pipeline,
decoding every member on read (``HOIGEN_EAGER_DECODE=1``, as before) vs lazy samples that decode only
what a stage reads and copy the rest as bytes.

One process, one torch thread, ``--workers 1``, so ``time.process_time()`` (all threads of this process)
is the stage's whole CPU; the two modes run interleaved, each into a fresh folder, and the median of
``repeats`` runs is reported. Rows ``io-grasp`` ... ``io-validate``: ratio = eager / lazy CPU per
sample (> 1: lazy is cheaper), plus ``io-read``: reading a render folder and using ``ann.json`` only.
``HOIGEN_BENCH_IO=GRASPSxFRAMESxSIZE`` sets the chain (default 1x4x512: mug and can, 2 views, render
maps at 512 px as by default; synthesize paints 64 px in 2 steps).
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hoigen.data.shards import EAGER_ENV

STAGES = ("grasp", "render", "synthesize", "export", "validate")


def _mode(eager: bool) -> None:
    if eager:
        os.environ[EAGER_ENV] = "1"
    else:
        os.environ.pop(EAGER_ENV, None)


def _cpu_per_sample(run: Callable[[Path], int], out: Path, eager: bool) -> float:
    _mode(eager)
    try:
        t0 = time.process_time()
        samples = run(out)
        return (time.process_time() - t0) / max(samples, 1)
    finally:
        _mode(False)


def stage_runners(root: Path, grasps: int, frames: int, size: int) -> dict[str, Callable[[Path], int]]:
    """For each stage, a function that runs it into a folder and returns the samples it handled;
    the inputs (grasp, render, synthesize folders) are made once under ``root``."""
    from hoigen import api
    from hoigen.data.validate import validate
    from hoigen.diffusion.options import SynthOptions
    from hoigen.export.options import ExportOptions
    from hoigen.grasp.options import GraspOptions
    from hoigen.options import Common
    from hoigen.render.options import RenderOptions

    logging.getLogger("hoigen.export").setLevel(logging.ERROR)  # "no val/ split" once per export run
    quiet = Common(quiet=True)
    grasp_opts = GraspOptions(categories=["mug", "can"], grasps=grasps, frames=frames)
    render_opts = RenderOptions(views=2, size=size)
    synth_opts = SynthOptions(steps=2, size=64)
    api.grasp(None, root / "grasp", grasp_opts, quiet)
    api.render(root / "grasp", root / "render", render_opts, quiet)
    api.synthesize(root / "render", root / "synth", synth_opts, quiet)
    return {
        "grasp": lambda out: api.grasp(None, out, grasp_opts, quiet).samples_written,
        "render": lambda out: api.render(root / "grasp", out, render_opts, quiet).samples_written,
        "synthesize": lambda out: api.synthesize(root / "render", out, synth_opts, quiet).samples_written,
        "export": lambda out: api.export(root / "synth", out, ExportOptions(format="nocs"), quiet).samples_written,
        "validate": lambda out: validate(root / "synth").samples,
    }


def read_ann_only(folder: Path) -> int:
    """Read every sample of a folder through the runner's input path (checksums, contract check), use its
    ``ann.json`` only; returns 1 (the caller divides by the sample count)."""
    from hoigen.data.runner import input_tasks

    for task in input_tasks(folder, ("render",)):
        for sample in task.samples():
            sample["ann.json"]["key"]  # noqa: B018 - read it
    return 1


def bench_io(repeats: int = 3) -> list[tuple]:
    """One row per stage (keys ``io-<stage>``) and ``io-read``: CPU s/sample, decode all vs lazy."""
    import torch

    from benchmarks.bench import Row

    torch.set_num_threads(1)  # OpenMP threads spin-wait on a shared CPU
    grasps, frames, size = (int(x) for x in os.environ.get("HOIGEN_BENCH_IO", "1x4x512").split("x"))
    root = Path(tempfile.mkdtemp(prefix="hoigen-bench-io-"))
    runners = stage_runners(root, grasps, frames, size)
    runs = iter(range(1_000_000))
    rows = []
    for stage in STAGES:
        base, cand = [], []
        for _ in range(repeats):
            base.append(_cpu_per_sample(runners[stage], root / f"{stage}-{next(runs)}", eager=True))
            cand.append(_cpu_per_sample(runners[stage], root / f"{stage}-{next(runs)}", eager=False))
        rows.append(
            Row(f"io {stage}: CPU s/sample, decode every member vs lazy", statistics.median(base),
                statistics.median(cand), key=f"io-{stage}")  # fmt: skip
        )
    count = len(_keys(root / "render"))
    base, cand = [], []
    for _ in range(repeats * 3):
        for eager, into in ((True, base), (False, cand)):
            into.append(_cpu_per_sample(lambda _out: read_ann_only(root / "render"), root, eager) / count)
    rows.append(
        Row(f"io read: render folder, use ann.json only ({count} samples), CPU s/sample", statistics.median(base),
            statistics.median(cand), key="io-read")  # fmt: skip
    )
    return rows


def _keys(folder: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / "index.parquet", columns=["key"]).column("key").to_pylist()


if __name__ == "__main__":
    from benchmarks.bench import Row, bench_lines

    result = bench_io(int(os.environ.get("HOIGEN_BENCH_IO_REPEATS", "3")))
    for raw in result:
        row = Row(*raw)
        print(f"{row.name:75s} {row.base * 1000:9.2f} ms {row.cand * 1000:9.2f} ms {row.ratio:6.2f}x")
    print("\n".join(bench_lines(result)))
