"""Left vs right hands in ``make bench`` (``python -m benchmarks.bench --hands``): grasp quality of the
two hands on the same objects, seeds and filters, on a table and floating.

Objects: every procedural category and the trimesh-made set of :mod:`benchmarks.grasp`; each object's
grasps come from one round of candidates (``HOIGEN_BENCH_HANDS=GxC``, default 8 grasps from 24
candidates) through :func:`hoigen.grasp.synth.synthesize_grasps`, with the grasp stage's table (the
plane through the object's lowest point) or none. The figures are deterministic; the rates are not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from benchmarks.grasp import SetResult, extra_objects
from hoigen.objects.asset import ObjectAsset


@dataclass
class SideResult(SetResult):
    table_rejected: int = 0  # candidates rejected because the hand reached below the table




def run_side(side: str, assets: list[ObjectAsset], grasps: int, candidates: int, table: bool) -> SideResult:
    """``grasps`` per object from ``candidates`` by the ``side`` hand, on a table (the grasp stage's
    default: the plane through the object's lowest point) or floating; every measured candidate counted."""
    from hoigen.grasp.skin import interior_skin
    from hoigen.grasp.stage import support_in_mesh
    from hoigen.grasp.synth import synthesize_grasps
    from hoigen.hand import load_hand

    hand = load_hand(side)
    interior_skin(hand)
    res = SideResult(f"{side}, {'table' if table else 'no table'}", objects=len(assets))
    for i, asset in enumerate(assets):
        t0 = time.perf_counter()
        out, report = synthesize_grasps(
            asset.sdf_mesh, hand, np.random.default_rng([0, i]), grasps, category=asset.category, key=asset.sha256,
            candidates=candidates, support=support_in_mesh(asset) if table else None,
        )  # fmt: skip
        res.seconds += time.perf_counter() - t0
        res.evaluated += report.evaluated
        res.accepted += report.accepted
        res.table_rejected += report.reasons.get("table", 0)
        res.grasps += [g.metrics for g in out]
    return res


def bench_hands(grasps: int = 8, candidates: int = 24) -> tuple[list[tuple], list[SideResult]]:
    """Left vs right on the same objects (every procedural category and the trimesh-made set), same
    seeds and filters, on a table and floating. Rows (key ``hands-<metric>[-floating]``): ratio =
    left / right of the accepted share and of the mean penetration, simulation displacement and
    fingers in contact over accepted grasps (1 = the same; rate = the left hand's figure)."""
    from hoigen.objects import PROCEDURAL_CATEGORIES, procedural_objects

    assets = procedural_objects(list(PROCEDURAL_CATEGORIES)) + extra_objects()
    sets, rows = [], []
    for table in (True, False):
        right, left = (run_side(s, assets, grasps, candidates, table) for s in ("right", "left"))
        sets += [right, left]
        r, lf = right.row(), left.row()
        tail = "" if table else "-floating"
        where = "on a table" if table else "floating"
        for metric, label in (("accept_rate", "accepted share"), ("penetration_depth_cm", "penetration cm"),
                              ("sim_displacement_cm", "sim displacement cm"), ("contact_fingers", "fingers")):
            rows.append((
                f"hands {label}, {where}: left {lf[metric]:.3f} / right {r[metric]:.3f}",
                lf[metric], r[metric], f"hands-{metric.split('_')[0]}{tail}", lf[metric],
            ))  # fmt: skip
    return rows, sets


def print_hands_table(sets: list[SideResult]) -> None:
    """Left vs right: accepted/measured, table rejections and metric means over accepted grasps (stderr)."""
    from rich.table import Table

    from hoigen.data.progress import console

    table = Table(title="left vs right hands (same objects, seeds and filters; means over accepted grasps)")
    for c in ("hand, setting", "objects", "accepted/measured", "table rejects", "pen cm", "vol cm3", "sim cm",
              "fingers", "grasps/s/core"):  # fmt: skip
        table.add_column(c)
    for s in sets:
        r = s.row()
        table.add_row(
            s.name, str(r["objects"]), f"{r['accepted']}/{r['evaluated']} ({100 * r['accept_rate']:.0f}%)",
            str(s.table_rejected), f"{r['penetration_depth_cm']:.2f}",
            f"{r['penetration_volume_cm3']:.2f}", f"{r['sim_displacement_cm']:.2f}", f"{r['contact_fingers']:.2f}",
            f"{r['grasps_per_s']:.2f}",
        )  # fmt: skip
    console.print(table)
