"""Memory soak (``make soak``, minutes; not in CI): does resident memory stay flat over a long run?

Runs the grasp stage, then the render stage on its output, in this process with one worker, into a
temporary folder, and samples the resident set size (RSS, from ``/proc/self/statm``) after every
sample a stage yields. Reports RSS at 10% and at 100% of the samples; a stage passes when RSS grew
by less than 10% between the two (the first 10% pay for imports, caches and the renderer, so
growth after that is what a leak would show). Exit code 1 when a stage fails.

    python -m benchmarks.soak [--samples 5000] [--grasps 50] [--size 128] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_GROWTH = 0.10
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """Resident memory of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


@dataclass
class Trace:
    """RSS after every sample a stage yielded."""

    stage: str
    rss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def at(self, fraction: float) -> float:
        return self.rss[max(0, int(round(fraction * len(self.rss))) - 1)]

    def growth(self) -> float:
        return self.at(1.0) / self.at(0.1) - 1.0

    def row(self) -> tuple[str, ...]:
        ok = "ok" if self.growth() < MAX_GROWTH else "FAIL"
        return (
            self.stage,
            str(len(self.rss)),
            f"{self.at(0.1):.0f}",
            f"{self.at(1.0):.0f}",
            f"{max(self.rss):.0f}",
            f"{100 * self.growth():+.1f}%",
            f"{self.seconds:.0f}",
            ok,
        )


@contextlib.contextmanager
def counting(module: Any, name: str, trace: Trace) -> Iterator[None]:
    """Replace the stage function ``module.name`` by one that records RSS after each sample."""
    fn = getattr(module, name)

    def wrapped(samples: Any, ctx: Any) -> Iterator[Any]:
        for sample in fn(samples, ctx):
            yield sample
            trace.rss.append(rss_mb())

    setattr(module, name, wrapped)
    start = time.perf_counter()
    try:
        yield
    finally:
        trace.seconds = time.perf_counter() - start
        setattr(module, name, fn)


def soak(root: Path, samples: int, grasps: int, size: int, categories: list[str]) -> list[Trace]:
    """Grasp ``categories`` x ``grasps``, then render enough views for ``samples`` render samples."""
    import hoigen.grasp.stage as grasp_mod
    import hoigen.render.stage as render_mod
    from hoigen import api
    from hoigen.grasp.options import GraspOptions
    from hoigen.options import Common
    from hoigen.render.options import RenderOptions

    common = Common(seed=0, workers=1, quiet=True)
    frames = 25
    grasp_samples = len(categories) * grasps * frames
    views = max(1, -(-samples // grasp_samples))
    traces = [Trace("grasp"), Trace("render")]
    with counting(grasp_mod, "grasp_stage", traces[0]):
        api.grasp(None, root / "grasp", GraspOptions(categories=categories, grasps=grasps, frames=frames), common)
    with counting(render_mod, "render_stage", traces[1]):
        api.render(root / "grasp", root / "render", RenderOptions(views=views, size=size), common)
    return traces


def table(traces: list[Trace]) -> str:
    head = ("stage", "samples", "RSS@10% MiB", "RSS@100% MiB", "peak MiB", "growth", "seconds", "<10%")
    rows = [head, *(t.row() for t in traces)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=5000, help="render samples (default 5000)")
    parser.add_argument("--grasps", type=int, default=50, help="grasps per object (default 50: 5,000 grasp samples)")
    parser.add_argument("--size", type=int, default=128, help="render size in pixels (default 128)")
    parser.add_argument("--categories", default="mug,bowl,can,bottle", help="procedural objects")
    parser.add_argument("--keep", type=Path, default=None, help="write here instead of a temporary folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    with tempfile.TemporaryDirectory(prefix="hoigen-soak-") as tmp:
        root = args.keep or Path(tmp)
        traces = soak(root, args.samples, args.grasps, args.size, args.categories.split(","))
    print(table(traces))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {peak:.0f} MiB; pass: RSS growth from 10% to 100% of the samples < {MAX_GROWTH:.0%}")
    return 0 if all(t.growth() < MAX_GROWTH for t in traces) else 1


if __name__ == "__main__":
    sys.exit(main())
