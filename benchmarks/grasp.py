"""The grasp benchmark behind ``make bench``: throughput and the metric table against the targets.

Objects: every procedural category plus trimesh-made meshes (box, sphere, annulus/torus, capsule,
cylinder and a noisy "scanned-looking" sphere). For each object one batch is optimised and
measured (:func:`hoigen.grasp.synth.synthesize_grasps`; 16 grasps from 48 candidates per object
by default, ``HOIGEN_BENCH_GRASP=4x12`` for other sizes, one round). Throughput is accepted grasps
per CPU-second (``time.process_time()`` plus child processes' CPU) with one torch thread, everything
included: the SDF grid, optimisation, exact metrics and the pybullet test (collision files are made
before the timing, as the on-disk cache holds them after the first run in production).

Side by side: each pass runs in a fresh process (``python -m benchmarks.grasp``), alternating
between this tree and the baseline, ``BASELINE_REV``'s ``hoigen`` package extracted with
``git archive`` (``HOIGEN_BENCH_GRASP_BASELINE`` names another revision; ``none`` skips it), same
objects and seeds; three passes each, medians. The bench row's ratio is the baseline's CPU seconds
per accepted grasp over ours (= our rate / its rate); timings on a shared machine vary by a quarter.

Diversity: k-means (k = 20) over the 21 joints (cm, object frame) of the accepted grasps of a set,
entropy of the assignments and mean cluster size (cm), as GrabNet and GraspTTA report theirs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from hoigen.objects.asset import ObjectAsset

TARGETS = {"penetration_depth_cm": 0.5, "sim_displacement_cm": 2.0, "contact_fingers": 3.0, "grasps_per_s": 10.0}
# main before issue 22's grasp speed-ups (the optimiser on grid_sample, 17-digit hold-test files, ...)
BASELINE_REV = "4e98ec53651e825d6578a2b9e755978a08371ed9"
ROOT = Path(__file__).resolve().parents[1]


def extra_objects(seed: int = 0) -> list[ObjectAsset]:
    """Six trimesh-made objects in hand-graspable sizes (metres, y up, centred)."""
    rng = np.random.default_rng(seed)
    rot_x = trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])
    capsule = trimesh.creation.capsule(height=0.08, radius=0.028)
    capsule.apply_transform(rot_x)  # trimesh capsules lie along z; stand it up
    cylinder = trimesh.creation.cylinder(radius=0.03, height=0.12)
    cylinder.apply_transform(rot_x)
    scanned = trimesh.creation.icosphere(subdivisions=4, radius=0.045)
    bumps = np.sin(scanned.vertices @ rng.normal(size=(3, 4)) * 60.0).sum(axis=1) * 0.0015
    noise = rng.normal(scale=0.0006, size=len(scanned.vertices))
    scanned.vertices += scanned.vertex_normals * (bumps + noise)[:, None]
    scanned.vertices[:, 1] *= 1.3  # a bit egg-shaped
    meshes = {
        "tm-box": trimesh.creation.box((0.06, 0.11, 0.07)),
        "tm-sphere": trimesh.creation.icosphere(subdivisions=3, radius=0.04),
        "tm-torus": trimesh.creation.torus(major_radius=0.045, minor_radius=0.015),
        "tm-capsule": capsule,
        "tm-cylinder": cylinder,
        "tm-scanned": scanned,
    }
    out = []
    for name, mesh in meshes.items():
        v = mesh.vertices - mesh.bounds.mean(axis=0)
        out.append(ObjectAsset.create(name, "", v, mesh.faces, source="trimesh.creation"))
    return out


@dataclass
class SetResult:
    name: str
    objects: int = 0
    grasps: list[dict] = field(default_factory=list)  # metrics of every written grasp
    features: list[np.ndarray] = field(default_factory=list)  # joints (21*3, cm) of accepted grasps
    evaluated: int = 0
    accepted: int = 0
    seconds: float = 0.0  # wall
    cpu: float = 0.0  # process + children CPU seconds

    def row(self) -> dict[str, float]:
        from hoigen.grasp.metrics import cluster_entropy

        acc = [m for m in self.grasps if m["accepted"]]
        mean = {k: float(np.mean([m[k] for m in acc])) if acc else float("nan") for k in (
            "penetration_depth_cm", "penetration_volume_cm3", "sim_displacement_cm", "contact_fingers")}  # fmt: skip
        entropy, size = cluster_entropy(np.asarray(self.features), k=20) if self.features else (0.0, 0.0)
        return {
            "objects": self.objects,
            "evaluated": self.evaluated,
            "accepted": self.accepted,
            "accept_rate": self.accepted / max(1, self.evaluated),
            **mean,
            "entropy": entropy,
            "cluster_size_cm": size,
            "grasps_per_s": self.accepted / max(self.seconds, 1e-9),
            "grasps_per_cpu_s": self.accepted / max(self.cpu, 1e-9),
        }


def run_set(name: str, assets: list[ObjectAsset], grasps: int, candidates: int, seed: int = 0) -> SetResult:
    """Synthesise ``grasps`` per object from ``candidates`` and collect the metrics."""
    from hoigen.grasp.synth import synthesize_grasps
    from hoigen.hand import load_hand

    hand = load_hand("right")
    hand.forward()  # warm caches outside the timing
    from hoigen.grasp.skin import interior_skin

    interior_skin(hand)
    from hoigen.grasp.simulate import collision_file

    for asset in assets:  # the on-disk collision cache, as after a first run
        collision_file(asset.mesh, asset.sha256)
    res = SetResult(name, objects=len(assets))
    for i, asset in enumerate(assets):
        t0, c0 = time.perf_counter(), cpu_seconds()
        out, report = synthesize_grasps(
            asset.mesh, hand, np.random.default_rng([seed, i]), grasps, category=asset.category,
            key=asset.sha256, candidates=candidates,
        )  # fmt: skip
        res.cpu += cpu_seconds() - c0
        res.seconds += time.perf_counter() - t0
        res.evaluated += report.evaluated
        res.accepted += report.accepted
        centre = asset.mesh.bounds.mean(axis=0)
        res.grasps += [g.metrics for g in out]
        held = [g for g in out if g.metrics["accepted"]]
        if held:  # joints of the accepted grasps in the object frame, one batched forward
            params = [g.pose.mano_params(hand) for g in held]
            batch = [np.stack([np.asarray(p[k]).reshape(-1) for p in params]) for k in params[0]]
            joints = hand.forward(*batch).joints.astype(np.float64)
            res.features += list(((joints - centre) * 100.0).reshape(len(held), -1))
    return res


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + child.ru_utime + child.ru_stime


def one_pass(grasps: int, candidates: int) -> list[SetResult]:
    """One pass over both sets from cold per-object caches (the SDF grids are rebuilt), plus their total."""
    from hoigen.objects import PROCEDURAL_CATEGORIES, procedural_objects
    from hoigen.objects.sdf import clear_cache

    clear_cache()
    sets = [
        run_set("procedural", procedural_objects(list(PROCEDURAL_CATEGORIES)), grasps, candidates),
        run_set("trimesh-made", extra_objects(), grasps, candidates),
    ]
    total = SetResult("all", objects=sum(s.objects for s in sets))
    for s in sets:
        total.grasps += s.grasps
        total.features += s.features
        total.evaluated += s.evaluated
        total.accepted += s.accepted
        total.seconds += s.seconds
        total.cpu += s.cpu
    return [*sets, total]


def baseline_tree(rev: str, dest: Path) -> Path | None:
    """``rev``'s ``hoigen`` package extracted under ``dest`` (None, with a note, when git cannot)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "hoigen"], check=True, capture_output=True, timeout=120
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"grasp bench: no baseline ({rev[:12]}: {exc}); the ratio is left out", file=sys.stderr)
        return None
    return dest


def _pass_in_process(tree: Path | None, grasps: int, candidates: int, out: Path) -> list[SetResult]:
    """Run :func:`one_pass` in a fresh process on ``tree``'s ``hoigen`` (None: this tree's)."""
    env = dict(os.environ)
    home = tree or ROOT  # ``-m`` puts the working directory first on sys.path: its ``hoigen`` is the one used
    env["PYTHONPATH"] = os.pathsep.join([str(home), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "benchmarks.grasp", "--size", f"{grasps}x{candidates}", "--json", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=str(home))
    result = json.loads(out.read_text())
    if Path(result["hoigen"]).resolve() != (home / "hoigen").resolve():
        raise RuntimeError(f"grasp bench: the pass ran {result['hoigen']}, not {home / 'hoigen'}")
    return [SetResult(**{**r, "features": [np.asarray(f) for f in r["features"]]}) for r in result["sets"]]


def bench_grasps(
    grasps: int = 16, candidates: int = 48, repeats: int = 3
) -> tuple[list[tuple], list[SetResult], list[SetResult] | None]:
    """The ``grasp`` bench row, this tree's median pass and the baseline's (None without one).

    Passes alternate between the baseline and this tree, each in a fresh process; synthesis is
    deterministic, so only the times differ between passes and the median pass (by CPU) is kept."""
    from benchmarks.bench import Row

    rev = os.environ.get("HOIGEN_BENCH_GRASP_BASELINE", BASELINE_REV)
    with tempfile.TemporaryDirectory(prefix="hoigen-grasp-bench-") as tmp:
        base_tree = None if rev.lower() == "none" else baseline_tree(rev, Path(tmp))
        ours, theirs = [], []
        for r in range(max(1, repeats)):
            if base_tree is not None:
                theirs.append(_pass_in_process(base_tree, grasps, candidates, Path(tmp) / f"base{r}.json"))
            ours.append(_pass_in_process(None, grasps, candidates, Path(tmp) / f"ours{r}.json"))

    def median(runs: list[list[SetResult]]) -> list[SetResult]:
        return sorted(runs, key=lambda run: run[-1].cpu)[len(runs) // 2]

    new = median(ours)
    old = median(theirs) if theirs else None
    per_grasp = new[-1].cpu / max(new[-1].accepted, 1)
    base = old[-1].cpu / max(old[-1].accepted, 1) if old else float("nan")
    rates = ", ".join(f"{run[-1].row()['grasps_per_cpu_s']:.2f}" for run in ours)
    base_rates = ", ".join(f"{run[-1].row()['grasps_per_cpu_s']:.2f}" for run in theirs) or "none"
    rows = [
        Row(
            f"grasp: CPU s per accepted grasp, 1 thread, {grasps} grasps from {candidates} candidates per object, "
            f"baseline {rev[:10]} vs this tree (ours: median {1 / per_grasp:.2f}/CPU-s of {rates}; baseline: "
            f"{base_rates}; "
            f"{new[-1].accepted} of {new[-1].evaluated} measured accepted)",
            base,
            per_grasp,
            key="grasp",
            rate=1.0 / per_grasp,
        )
    ]
    return rows, new, old


# Published figures (see README "Grasp quality"): filled only with numbers found in the papers.
PUBLISHED: list[dict[str, str]] = []


def print_grasp_table(sets: list[SetResult], baseline: list[SetResult] | None = None) -> None:
    """The metric table (means over accepted grasps) with the targets, to the rich console (stderr);
    with ``baseline``, its rows first (marked "base"), for a before/after comparison."""
    from rich.table import Table

    from hoigen.data.progress import console

    cols = ("set", "objects", "accepted/measured", "pen cm", "vol cm3", "sim cm", "fingers", "entropy",
            "cluster cm", "grasps/s/core", "grasps/CPU-s")  # fmt: skip
    table = Table(
        title="grasp quality (means over accepted grasps; targets: pen <= 0.5, sim <= 2, fingers >= 3, >= 10/s)"
    )
    for c in cols:
        table.add_column(c)
    labelled = [(f"{s.name} (base)", s) for s in baseline or []] + [(s.name, s) for s in sets]
    for name, s in labelled:
        r = s.row()
        table.add_row(
            name, str(r["objects"]), f"{r['accepted']}/{r['evaluated']}", f"{r['penetration_depth_cm']:.2f}",
            f"{r['penetration_volume_cm3']:.2f}", f"{r['sim_displacement_cm']:.2f}", f"{r['contact_fingers']:.2f}",
            f"{r['entropy']:.2f}", f"{r['cluster_size_cm']:.2f}", f"{r['grasps_per_s']:.2f}",
            f"{r['grasps_per_cpu_s']:.2f}",
        )  # fmt: skip
    for p in PUBLISHED:
        table.add_row(*(p.get(c, "") for c in cols))
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    """One pass in this process (``--size GxC``), its sets written as JSON to ``--json``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="16x48", help="grasps x candidates per object")
    parser.add_argument("--json", type=Path, required=True, help="where to write the pass's sets")
    args = parser.parse_args(argv)
    grasps, candidates = (int(x) for x in args.size.split("x"))
    sets = one_pass(grasps, candidates)
    import hoigen

    rows = [{**asdict(s), "features": [f.tolist() for f in s.features]} for s in sets]
    args.json.write_text(json.dumps({"hoigen": str(Path(hoigen.__file__).parent), "sets": rows}))


if __name__ == "__main__":
    main()
