"""``make bench``: side-by-side timings, reported as medians and ratios (machines here are noisy).

Each row times a baseline and a candidate in the same run, interleaved, and prints the median
seconds of each and their ratio (baseline / candidate; > 1 means the candidate is faster).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hoigen.config import Common, GraspOptions, RenderOptions
from hoigen.data.progress import console


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


def bench_workers(repeats: int = 2) -> tuple[str, float, float]:
    """The render stage on 4 shards with --workers 1 vs --workers 2."""
    from hoigen import stages

    tmp = Path(tempfile.mkdtemp(prefix="hoigen-bench-"))
    quiet = Common(quiet=True)
    stages.grasp(GraspOptions(grasps=2, frames=4), tmp / "grasp", quiet)
    runs = iter(range(10_000))

    def with_workers(n: int) -> Callable[[], object]:
        opts = RenderOptions(views=2, size=256)
        return lambda: stages.render(tmp / "grasp", tmp / f"render-{next(runs)}", opts, Common(quiet=True, workers=n))

    base, cand = side_by_side(with_workers(1), with_workers(2), repeats)
    return "render stage, 4 shards x 16 samples: --workers 1 vs 2", base, cand


def main() -> None:
    rows = [bench_renderer_reuse(), bench_workers()]
    from rich.table import Table

    table = Table(title="hoigen bench (median seconds; ratio = baseline / candidate)")
    for col in ("benchmark", "baseline s", "candidate s", "ratio"):
        table.add_column(col)
    for name, base, cand in rows:
        table.add_row(name, f"{base:.3f}", f"{cand:.3f}", f"{base / cand:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
