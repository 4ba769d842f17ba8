"""Grasp statistics from a grasp output folder's ``index.parquet``: filter counts and metric tables.

One index row is one trajectory frame; the statistics use one row per grasp (frame 0). Candidate
counts (``candidates``, ``evaluated``, ``rejected``) are per object and repeated on each of its
grasps, so they are taken once per object. ``hoigen grasp --report`` prints the tables to stderr
(the rich console every progress message uses), keeping stdout free for pipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hoigen.data.index import read_index

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


def filter_stats(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Candidates, evaluated, accepted and rejected counts over the objects, and grasps written."""
    per_object: dict[str, dict[str, Any]] = {}
    for r in rows:
        per_object.setdefault(r["object"], r)

    def total(name: str) -> int:
        return int(sum(int(r.get(name, 0) or 0) for r in per_object.values()))

    evaluated = total("evaluated")
    rejected = total("rejected")
    return {
        "objects": len(per_object),
        "candidates": total("candidates"),
        "evaluated": evaluated,
        "accepted": evaluated - rejected,
        "rejected": rejected,
        "grasps_written": len(rows),
        "grasps_written_rejected": sum(1 for r in rows if r.get("accepted") is False),
    }


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
    stats = filter_stats(rows)
    console.print(
        f"grasp filter: {stats['candidates']} candidates, {stats['evaluated']} evaluated, "
        f"{stats['accepted']} accepted, {stats['rejected']} rejected; {stats['grasps_written']} grasps written "
        f"({stats['grasps_written_rejected']} of them rejected ones, marked accepted=false)"
    )
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
