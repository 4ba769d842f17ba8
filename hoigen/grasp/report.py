"""Grasp statistics from a grasp output folder's ``index.parquet``: filter counts and metric tables.

One index row is one trajectory frame; the metric tables use one row per grasp (frame 0). Candidate
counts come from ``grasp_stats/<object>.json`` (one per object, written by the stage), so objects
with no accepted grasp (and no index rows) still count. ``hoigen grasp --report`` prints the tables to stderr
(the rich console every progress message uses), keeping stdout free for pipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hoigen.data.index import read_index

STATS_DIR = "grasp_stats"  # per-object counts of the grasp filter, one JSON file per object


def read_object_stats(out_dir: Path) -> list[dict[str, Any]]:
    """The per-object counts written by :func:`hoigen.grasp.stage.write_object_stats`, by object id."""
    import json

    folder = Path(out_dir) / STATS_DIR
    return [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []

TABLE_METRICS = (
    ("penetration_depth_cm", "pen cm"),
    ("penetration_volume_cm3", "vol cm3"),
    ("sim_displacement_cm", "sim cm"),
    ("contact_fingers", "fingers"),
    ("approach_penetration_cm", "approach cm"),
)


def grasp_rows(folder: Path) -> list[dict[str, Any]]:
    """One dict per grasp (frame 0 rows of the index), with the ``grasp_`` prefix dropped."""
    table = read_index(Path(folder)).to_pylist()
    rows = []
    for r in table:
        if r.get("frame", 0) != 0:
            continue
        row = {"object": r.get("object"), "category": r.get("category"), "grasp": r.get("grasp")}
        row.update({k[len("grasp_") :]: v for k, v in r.items() if k.startswith("grasp_")})
        rows.append(row)
    return rows


FILTER_FLAGS = {
    "penetration": "--max-penetration",
    "sim_displacement": "--max-sim-displacement",
    "contacts": "--min-contacts",
}


def filter_stats(folder: Path) -> dict[str, Any]:
    """Candidate counts over the objects (from ``grasp_stats/``), grasps written, and the shortfall.

    ``short`` lists the objects with fewer accepted grasps than asked for (object, wanted,
    written); ``reasons`` counts why candidates were rejected (a candidate can fail several)."""
    per_object = read_object_stats(Path(folder))
    reasons: dict[str, int] = {}
    for o in per_object:
        for k, v in o.get("reasons", {}).items():
            reasons[k] = reasons.get(k, 0) + int(v)

    def total(name: str) -> int:
        return int(sum(int(o.get(name, 0)) for o in per_object))

    short = [
        {"object": o["object"], "wanted": o["wanted"], "written": o["written"]}
        for o in per_object
        if o["written"] < o["wanted"]
    ]
    return {
        "objects": len(per_object),
        "candidates": total("candidates"),
        "rounds": total("rounds"),
        "evaluated": total("evaluated"),
        "accepted": total("accepted"),
        "rejected": total("rejected"),
        "grasps_wanted": total("wanted"),
        "grasps_written": total("written"),
        "objects_short": len(short),
        "short": short,
        "reasons": dict(sorted(reasons.items())),
    }


def filter_line(stats: dict[str, Any]) -> str:
    """One line of the filter counts."""
    why = ", ".join(f"{k} {v}" for k, v in stats["reasons"].items()) or "none"
    return (
        f"grasp filter: {stats['candidates']} candidates in {stats['rounds']} rounds, {stats['evaluated']} measured, "
        f"{stats['accepted']} accepted, {stats['rejected']} rejected (why: {why}); {stats['grasps_written']} of "
        f"{stats['grasps_wanted']} grasps written, {stats['objects_short']} objects short"
    )


def no_grasp_error(stats: dict[str, Any]) -> str:
    """The one-line error when no object yielded an accepted grasp: which filters, which flag."""
    reasons = stats["reasons"]
    if reasons:
        worst = max(reasons, key=lambda k: reasons[k])
        why = ", ".join(f"{FILTER_FLAGS.get(k, k)} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        hint = f"loosen {FILTER_FLAGS.get(worst, worst)} (rejected most) or raise --candidates / --max-rounds"
    else:
        why, hint = "no candidate measured", "raise --candidates / --max-rounds"
    return (
        f"grasp: no accepted grasp for any of {stats['objects']} objects ({stats['evaluated']} candidates measured, "
        f"rejected by {why}); {hint}"
    )


def summarise(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Means of the table metrics and the accepted share, grouped by ``key`` ('object'/'category')."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get(key)), []).append(r)
    out = {}
    for name, items in sorted(groups.items()):
        stats = {"grasps": float(len(items))}
        for metric, _ in TABLE_METRICS:
            values = [float(r[metric]) for r in items if r.get(metric) is not None]
            stats[metric] = float(np.mean(values)) if values else float("nan")
        stats["accepted"] = float(np.mean([bool(r.get("accepted", True)) for r in items]))
        out[name] = stats
    return out


def print_report(folder: Path) -> dict[str, Any]:
    """Print filter counts and per-object and per-category metric tables; return the numbers."""
    from rich.table import Table

    from hoigen.data.progress import console

    rows = grasp_rows(folder)
    stats = filter_stats(folder)
    console.print(filter_line(stats))
    for o in stats["short"]:
        console.print(f"  short: {o['object']}: {o['written']} of {o['wanted']} grasps accepted")
    result: dict[str, Any] = {"filter": stats}
    for key in ("object", "category"):
        summary = summarise(rows, key)
        result[key] = summary
        table = Table(title=f"grasp metrics per {key} (means)")
        for col in (key, "grasps", "accepted", *(label for _, label in TABLE_METRICS)):
            table.add_column(col)
        for name, s in summary.items():
            table.add_row(
                name, f"{int(s['grasps'])}", f"{100 * s['accepted']:.0f}%",
                *(f"{s[m]:.2f}" for m, _ in TABLE_METRICS),
            )  # fmt: skip
        console.print(table)
    return result
