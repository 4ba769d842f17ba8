"""``make bench``: side-by-side timings, reported as medians and ratios (machines here are noisy).

Each row times a baseline and a candidate in the same run, interleaved, and prints the median
seconds of each and their ratio (baseline / candidate; > 1 means the candidate is faster).
After the table, every row also prints one machine-readable line, ``BENCH <key> ratio=<x>`` (plus
``rate=<x>`` where a rate is the row's figure), for scripts: ``make bench | grep ^BENCH``.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hoigen.data.progress import console
from hoigen.grasp.options import GraspOptions
from hoigen.options import Common
from hoigen.render.options import RenderOptions


class Row(NamedTuple):
    """One bench row: a baseline and a candidate timed side by side (a plain 3-tuple is a Row without key)."""

    name: str
    base: float
    cand: float
    key: str | None = None  # the BENCH line's name; None: derived from ``name``
    rate: float | None = None  # the row's rate where a rate is its figure (e.g. accepted grasps per CPU-second)

    @property
    def ratio(self) -> float:
        return self.base / self.cand if self.cand else float("inf")


def bench_key(name: str) -> str:
    """A BENCH line name from a row's description: its text before the first ':' as a lowercase slug."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.split(":")[0].lower()).strip("-")
    return slug or "row"


def bench_lines(rows: Iterable[tuple]) -> list[str]:
    """The machine-readable lines of ``rows``: ``BENCH <key> ratio=<x>[ rate=<x>]``, keys made unique."""
    lines, seen = [], {}
    for raw in rows:
        row = Row(*raw)
        key = row.key or bench_key(row.name)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            key = f"{key}-{seen[key]}"
        line = f"BENCH {key} ratio={row.ratio:.3f}"
        if row.rate is not None:
            line += f" rate={row.rate:.3f}"
        lines.append(line)
    return lines


def median_time(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def side_by_side(base: Callable[[], object], cand: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Interleave the two so that machine noise hits both alike; return their medians."""
    b, c = [], []
    for _ in range(repeats):
        b += median_time(base, 1)
        c += median_time(cand, 1)
    return statistics.median(b), statistics.median(c)


def bench_renderer_reuse(size: int = 256, frames: int = 8, repeats: int = 3) -> tuple[str, float, float]:
    """A new OffscreenRenderer per frame vs one renderer reused across frames."""
    from hoigen.hand import load_hand
    from hoigen.objects import procedural_objects
    from hoigen.render.cameras import sample_camera
    from hoigen.render.renderer import Renderer, SceneSpec

    hand = load_hand("right")
    out = hand.forward(np.zeros(3), hand.curl_pose(0.4), np.zeros(10), np.array([0.0, 0.0, 0.08]))
    obj = procedural_objects(["mug"])[0]
    cam = sample_camera(np.zeros(3), np.random.default_rng(0), size, size)
    spec = SceneSpec(
        hand_vertices=out.vertices[0],
        hand_faces=hand.faces,
        object_mesh=obj.mesh,
        object_pose=np.eye(4),
        nocs_from_mesh=obj.nocs_from_mesh,
        camera=cam,
        joints3d=out.joints[0],
        mesh_key=obj.id,
    )

    def fresh() -> None:
        for _ in range(frames):
            with Renderer(size, size) as r:
                r.render(spec)

    def reused() -> None:
        with Renderer(size, size) as r:
            for _ in range(frames):
                r.render(spec)

    # pyrender's EGL platform terminates the shared display when a renderer is deleted, so each
    # side owns its renderers for the duration of one measurement only
    base, cand = side_by_side(fresh, reused, repeats)
    return f"render {frames} frames @{size}px: new renderer/frame vs reused", base, cand


def bench_full_vs_bare(size: int = 512, frames: int = 12, repeats: int = 5) -> tuple[str, float, float]:
    """Seconds per frame: one bare shaded colour pass vs the full set of passes, same scenes, one renderer."""
    from benchmarks.render import bench_specs
    from hoigen.render.renderer import Renderer

    specs = bench_specs(size, frames)
    with Renderer(size, size) as r:
        r.render(specs[0])  # warm-up: GL buffers, object cache

        def bare() -> None:
            for spec in specs:
                r.shade_only(spec)

        def full() -> None:
            for spec in specs:
                r.render(spec)

        base, cand = side_by_side(bare, full, repeats)
    base, cand = base / frames, cand / frames
    return (
        f"{size}px s/frame: bare colour pass ({1 / base:.1f} fps) vs all passes ({1 / cand:.1f} fps); "
        "ratio = full rate / bare rate, goal >= 0.50",
        base,
        cand,
    )


def bench_renderer_memory(size: int = 256, frames: int = 1000) -> tuple[str, float, float]:
    """Resident memory (MB) of the process after 100 and after ``frames`` full renders (must stay flat)."""
    import psutil

    from benchmarks.render import bench_specs
    from hoigen.render.renderer import Renderer

    specs = bench_specs(size, 16)
    process = psutil.Process()
    with Renderer(size, size) as r:
        after_100 = 0.0
        for i in range(frames):
            r.render(specs[i % len(specs)])
            if i + 1 == 100:
                after_100 = process.memory_info().rss / 2**20
        after_all = process.memory_info().rss / 2**20
    growth = 100.0 * (after_all / after_100 - 1.0)
    return f"renderer RSS MB @{size}px: after 100 vs {frames} frames (growth {growth:+.1f}%)", after_100, after_all


def bench_workers(repeats: int = 2) -> tuple[str, float, float]:
    """The render stage on 4 shards with --workers 1 vs --workers 2."""
    from hoigen import api

    tmp = Path(tempfile.mkdtemp(prefix="hoigen-bench-"))
    quiet = Common(quiet=True)
    api.grasp(None, tmp / "grasp", GraspOptions(grasps=2, frames=4), quiet)
    runs = iter(range(10_000))

    def with_workers(n: int) -> Callable[[], object]:
        opts = RenderOptions(views=2, size=256)
        return lambda: api.render(tmp / "grasp", tmp / f"render-{next(runs)}", opts, Common(quiet=True, workers=n))

    base, cand = side_by_side(with_workers(1), with_workers(2), repeats)
    return "render stage, 4 shards x 16 samples: --workers 1 vs 2", base, cand


def bench_grasp() -> list[tuple]:
    """Grasp synthesis: accepted grasps per CPU-second vs the baseline, and the metric tables (printed)."""
    from benchmarks.grasp import bench_grasps, print_grasp_table

    size = os.environ.get("HOIGEN_BENCH_GRASP", "16x48")  # grasps x candidates per object
    grasps, candidates = (int(x) for x in size.split("x"))
    rows, sets, baseline = bench_grasps(grasps, candidates)
    print_grasp_table(sets, baseline)
    return rows


def bench_hands() -> list[tuple]:
    """Left vs right grasp quality on the same objects (``benchmarks/hands.py``); the table is printed."""
    from benchmarks.hands import bench_hands as run
    from benchmarks.hands import print_hands_table

    grasps, candidates = (int(x) for x in os.environ.get("HOIGEN_BENCH_HANDS", "8x24").split("x"))
    rows, sets = run(grasps, candidates)
    print_hands_table(sets)
    return rows


def bench_huge_mesh(repeats: int = 1) -> tuple[str, float, float]:
    """Simplify a 5.2-million-face sphere to the face budget: quadric decimation alone vs the
    loader's path (vertex clustering to 2x the budget first, then quadric decimation)."""
    import fast_simplification
    import trimesh

    from hoigen.objects.repair import FACE_BUDGET, simplify

    mesh = trimesh.creation.icosphere(9, radius=0.05)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)

    def quadric_only() -> object:
        return fast_simplification.simplify(v.astype(np.float32), f.astype(np.int32), target_count=FACE_BUDGET)

    base, cand = side_by_side(quadric_only, lambda: simplify(v, f, None, FACE_BUDGET), repeats)
    return f"simplify {len(f):,} faces to {FACE_BUDGET:,}: quadric only vs clustering + quadric", base, cand


def bench_synthesis() -> list[tuple[str, float, float]]:
    """Fused 9-channel ControlNet vs MultiControlNet of three (s/image), and the fused pipeline vs its step bound.

    ``HOIGEN_BENCH_SYNTH=sd15`` runs SD-1.5-sized random-weight models at 512 px, 20 steps, float16
    on CUDA; the default is the tiny stand-in at 64 px, 10 steps on CPU. The two timings of a row
    are interleaved; the second row's baseline is ``steps`` x (one ControlNet + one UNet forward)
    at the guidance batch, so its ratio is the share of that bound the whole pipeline reaches.
    """
    import torch

    from benchmarks.diffusion import bench_scale, build_pair, runners, step_bound_runner, warm

    scale = bench_scale()
    if scale.device == "cpu":
        torch.set_num_threads(1)  # OpenMP threads spin-wait on a shared CPU and slow everything down
    fused, multi = build_pair(scale)
    run_fused, run_multi = runners(scale, fused, multi)
    run_bound = step_bound_runner(scale, fused)
    warm(run_fused, run_multi, run_bound)
    multi_s, fused_s = side_by_side(run_multi, run_fused, scale.repeats)
    bound_s, fused2_s = side_by_side(run_bound, run_fused, scale.repeats)
    per = scale.batch
    where = f"{scale.name} {scale.size}px {scale.steps} steps batch {per} {str(scale.dtype)[6:]} {scale.device}"
    from benchmarks.diffusion import adapter_rows, loop_rows

    return adapter_rows(scale, fused, run_fused, run_multi) + loop_rows(scale, fused) + [
        (
            f"synth {where}: s/image, MultiControlNet x3 ({per / multi_s:.2f} img/s) vs fused 9-ch "
            f"({per / fused_s:.2f} img/s); goal >= 2.5x on GPU",
            multi_s / per,
            fused_s / per,
        ),
        (
            f"synth {where}: s/image, bound 1 UNet + 1 ControlNet/step vs fused pipeline; "
            "ratio = share of the bound, goal >= 0.90",
            bound_s / per,
            fused2_s / per,
        ),
    ]


def bench_worker_start(repeats: int = 2) -> tuple[str, float, float]:
    """The render stage with --workers 2: spawned workers vs workers forked from a preloaded forkserver.

    Each forkserver run starts a fresh server (as each CLI run does), so its one-off imports count.
    """
    import multiprocessing.forkserver as forkserver
    import os

    from hoigen import api
    from hoigen.data.runner import START_METHOD_ENV

    tmp = Path(tempfile.mkdtemp(prefix="hoigen-bench-"))
    api.grasp(None, tmp / "grasp", GraspOptions(categories=["mug", "can"], grasps=1, frames=2), Common(quiet=True))
    runs = iter(range(10_000))

    def with_start(method: str) -> Callable[[], object]:
        def run() -> None:
            forkserver._forkserver._stop()
            os.environ[START_METHOD_ENV] = method
            try:
                opts = RenderOptions(views=1, size=64)
                api.render(tmp / "grasp", tmp / f"render-{next(runs)}", opts, Common(quiet=True, workers=2))
            finally:
                del os.environ[START_METHOD_ENV]

        return run

    base, cand = side_by_side(with_start("spawn"), with_start("forkserver"), repeats)
    return "render stage --workers 2, 2 small shards: spawn vs forkserver workers", base, cand


def main() -> None:
    import os
    import sys

    if "--synth" in sys.argv[1:] or os.environ.get("HOIGEN_BENCH_ONLY") == "synth":
        rows = bench_synthesis()
    elif "--grasp" in sys.argv[1:] or os.environ.get("HOIGEN_BENCH_ONLY") == "grasp":
        rows = bench_grasp()
    elif "--hands" in sys.argv[1:] or os.environ.get("HOIGEN_BENCH_ONLY") == "hands":
        rows = bench_hands()
    elif "--io" in sys.argv[1:] or os.environ.get("HOIGEN_BENCH_ONLY") == "io":
        from benchmarks.io import bench_io

        rows = bench_io()
    else:
        from benchmarks.render import bench_render

        rows = [bench_renderer_reuse(), *bench_render(), bench_renderer_memory(), bench_workers()]
        rows += [bench_worker_start(), bench_huge_mesh()]
        rows += bench_synthesis()
        rows += bench_grasp()
        rows += bench_hands()
        from benchmarks.io import bench_io

        rows += bench_io()
    from rich.table import Table

    table = Table(title="hoigen bench (median seconds; ratio = baseline / candidate)")
    for col in ("benchmark", "baseline s", "candidate s", "ratio"):
        table.add_column(col)
    for raw in rows:
        row = Row(*raw)
        table.add_row(row.name, f"{row.base:.3f}", f"{row.cand:.3f}", f"{row.ratio:.2f}x")
    console.print(table)
    for line in bench_lines(rows):
        print(line, flush=True)


if __name__ == "__main__":
    main()
