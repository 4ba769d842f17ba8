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
        row = {"object": r.get("object"), "category": r.get("category"), "grasp": r.get("grasp"),
               "side": r.get("hand_side")}  # fmt: skip
        row.update({k[len("grasp_") :]: v for k, v in r.items() if k.startswith("grasp_")})
        rows.append(row)
    return rows


FILTER_FLAGS = {
    "penetration": "--max-penetration",
    "sim_displacement": "--max-sim-displacement",
    "contacts": "--min-contacts",
    "table": "--no-table",
}


COUNTS = ("wanted", "written", "evaluated", "accepted", "rejected", "candidates", "rounds")


def _object_facts(folder: Path) -> dict[str, dict[str, Any]]:
    """Category, size (largest side, metres) and unit decision per object, from ``objects.parquet`` if present."""
    import pyarrow.parquet as pq

    from hoigen.data.contract import OBJECTS_FILE

    path = Path(folder) / OBJECTS_FILE
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    names = [c for c in ("id", "category", "size_m", "unit_scale", "scale_from") if c in table.column_names]
    return {r["id"]: r for r in table.select(names).to_pylist()}


def object_hint(o: dict[str, Any]) -> str | None:
    """Why an object's size may have kept its grasps from passing, or None."""
    from hoigen.objects.units import size_hint

    if o.get("size_m") is None:
        return None
    return size_hint(float(o["size_m"]), o.get("scale_from") or "as loaded")


def filter_stats(folder: Path) -> dict[str, Any]:
    """Candidate counts over the objects (from ``grasp_stats/``), grasps written, and the shortfall.

    ``per_object`` has, per object: category, size (``size_m``), unit factor and where it came from,
    candidates measured, accepted, grasps wanted and written. ``short`` lists the objects with fewer
    written grasps than asked for (with a size ``hint`` when the size is the likely cause); ``reasons``
    counts why candidates were rejected (a candidate can fail several)."""
    facts = _object_facts(Path(folder))
    per_object = []
    for o in read_object_stats(Path(folder)):
        fact = facts.get(o["object"], {})
        row = {
            "object": o["object"],
            "category": fact.get("category"),
            "size_m": fact.get("size_m"),
            "unit_scale": fact.get("unit_scale"),
            "scale_from": fact.get("scale_from"),
            **{k: int(o.get(k, 0)) for k in COUNTS},
            "reasons": o.get("reasons", {}),
        }
        row["hint"] = object_hint(row)
        per_object.append(row)
    reasons: dict[str, int] = {}
    for o in per_object:
        for k, v in o["reasons"].items():
            reasons[k] = reasons.get(k, 0) + int(v)
    sides: dict[str, dict[str, Any]] = {}  # per hand side (runs with --hands both; older stats have none)
    for o in read_object_stats(Path(folder)):
        for side, c in o.get("sides", {}).items():
            total_side = sides.setdefault(side, {"wanted": 0, "evaluated": 0, "accepted": 0, "reasons": {}})
            for k in ("wanted", "evaluated", "accepted"):
                total_side[k] += int(c.get(k, 0))
            for k, v in c.get("reasons", {}).items():
                total_side["reasons"][k] = total_side["reasons"].get(k, 0) + int(v)

    def total(name: str) -> int:
        return int(sum(o[name] for o in per_object))

    short = [
        {k: o[k] for k in ("object", "wanted", "written", "evaluated", "accepted", "hint")}
        for o in per_object
        if o["written"] < o["wanted"]
    ]
    return {
        "objects": len(per_object),
        "objects_with_grasps": sum(1 for o in per_object if o["written"] > 0),
        "candidates": total("candidates"),
        "rounds": total("rounds"),
        "evaluated": total("evaluated"),
        "accepted": total("accepted"),
        "rejected": total("rejected"),
        "grasps_wanted": total("wanted"),
        "grasps_written": total("written"),
        "objects_short": len(short),
        "short": short,
        "per_object": [{k: v for k, v in o.items() if k != "reasons"} for o in per_object],
        "reasons": dict(sorted(reasons.items())),
        "sides": dict(sorted(sides.items())),
    }


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole}" + (f" ({100 * part / whole:.0f}%)" if whole else "")


def filter_line(stats: dict[str, Any]) -> str:
    """One line of the filter counts: measured, accepted, written, and which objects are short."""
    why = ", ".join(f"{k} {v}" for k, v in stats["reasons"].items()) or "none"
    written = (
        f"{stats['grasps_written']} of {stats['grasps_wanted']} grasps written"
        if stats["grasps_written"]
        else "no grasp written"
    )
    short = ""
    if stats["short"]:
        names = ", ".join(f"{o['object']} {o['written']}/{o['wanted']}" for o in stats["short"][:8])
        more = f" and {len(stats['short']) - 8} more" if len(stats["short"]) > 8 else ""
        short = f" (short: {names}{more})"
    return (
        f"grasp filter: {stats['objects_with_grasps']} of {stats['objects']} objects have grasps; "
        f"{stats['candidates']} candidates in {stats['rounds']} rounds, accepted/measured "
        f"{_share(stats['accepted'], stats['evaluated'])}, rejected {stats['rejected']} (why: {why}); "
        f"{written}, {stats['objects_short']} objects short{short}"
    )


def short_line(o: dict[str, Any]) -> str:
    """One warning line for an object with fewer grasps than asked for (what was written, and why if known)."""
    if o["written"] == 0:
        head = f"{o['object']}: none of {o['evaluated']} measured candidates passed the filters; no grasp written"
    else:
        head = (
            f"{o['object']}: {o['written']} of {o['wanted']} grasps passed the filters ({o['accepted']} of "
            f"{o['evaluated']} measured candidates accepted); {o['written']} written"
        )
    hint = o.get("hint")
    return head + (f"; size is the likely cause: {hint}" if hint else "; see run.json grasp_filter")


def no_grasp_error(stats: dict[str, Any]) -> str:
    """The one-line error when no object yielded an accepted grasp: size when it is the likely cause, else
    which filters rejected the candidates and which flag to loosen."""
    sized = [o for o in stats.get("per_object", []) if o.get("hint")]
    if sized:
        names = "; ".join(f"{o['object']}: {o['hint']}" for o in sized[:3])
        more = f" (and {len(sized) - 3} more)" if len(sized) > 3 else ""
        return (
            f"grasp: no accepted grasp for any of {stats['objects']} objects ({stats['evaluated']} candidates "
            f"measured); size is the likely cause: {names}{more}"
        )
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
    """Means of the table metrics over the written grasps, grouped by ``key`` ('object'/'category')."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get(key)), []).append(r)
    out = {}
    for name, items in sorted(groups.items()):
        stats = {"grasps": float(len(items))}
        for metric, _ in TABLE_METRICS:
            values = [float(r[metric]) for r in items if r.get(metric) is not None]
            stats[metric] = float(np.mean(values)) if values else float("nan")
        out[name] = stats
    return out


def _counts(per_object: list[dict[str, Any]], key: str) -> dict[str, dict[str, int]]:
    """Summed candidate counts per ``key`` ('object'/'category'), every object included (those with no grasp too)."""
    out: dict[str, dict[str, int]] = {}
    for o in per_object:
        c = out.setdefault(str(o.get(key)), {"objects": 0, "evaluated": 0, "accepted": 0, "written": 0, "wanted": 0})
        c["objects"] += 1
        for k in ("evaluated", "accepted", "written", "wanted"):
            c[k] += int(o[k])
    return out


def _side_counts(stats: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Candidate counts per hand side (from ``filter_stats``'s ``sides``) and grasps written per side."""
    out = {}
    for side, c in stats.get("sides", {}).items():
        mine = [r for r in rows if r.get("side") == side]
        out[side] = {"objects": len({r["object"] for r in mine}), "written": len(mine),
                     **{k: int(c[k]) for k in ("evaluated", "accepted", "wanted")}}  # fmt: skip
    return out


def _size(o: dict[str, Any] | None) -> str:
    """``12.0 mm``: the largest side in cm and, short, where its unit came from (``typ`` = rescaled to typical)."""
    if not o or o.get("size_m") is None:
        return "-"
    source = str(o.get("scale_from") or "?").replace("auto typical size", "typ").replace("auto ", "")
    return f"{100 * float(o['size_m']):.1f} {source}"


def print_report(folder: Path) -> dict[str, Any]:
    """Print filter counts and per-object and per-category tables (every object, grasps or not); return them."""
    from rich.table import Table

    from hoigen.data.progress import console

    rows = grasp_rows(folder)
    stats = filter_stats(folder)
    console.print(filter_line(stats))
    for o in stats["short"]:
        console.print(f"  short: {short_line(o)}")
    both = len(stats.get("sides", {})) > 1
    for side, c in stats["sides"].items() if both else ():
        why = ", ".join(f"{k} {v}" for k, v in sorted(c["reasons"].items())) or "none"
        console.print(f"  {side} hand: accepted/measured {_share(c['accepted'], c['evaluated'])}, "
                      f"{c['accepted']} of {c['wanted']} wanted (rejected: {why})")  # fmt: skip
    result: dict[str, Any] = {"filter": stats}
    by_object = {o["object"]: o for o in stats["per_object"]}
    for key in ("object", "category", "side") if both else ("object", "category"):
        summary = summarise(rows, key)
        counts = _side_counts(stats, rows) if key == "side" else _counts(stats["per_object"], key)
        result[key] = {name: {**counts.get(name, {}), **summary.get(name, {})} for name in sorted(counts | summary)}
        table = Table(title=f"grasps per {key} (metric means over the written grasps)")
        extra = ("cm units",) if key == "object" else ("objects",)
        for col in (key, *extra, "acc/meas", "written", *(label for _, label in TABLE_METRICS)):
            table.add_column(col)
        for name in sorted(counts | summary):
            c, s = counts.get(name, {}), summary.get(name)
            first = _size(by_object.get(name)) if key == "object" else str(c.get("objects", 0))
            table.add_row(
                name, first, f"{c.get('accepted', 0)}/{c.get('evaluated', 0)}",
                f"{c.get('written', 0)}/{c.get('wanted', 0)}",
                *((f"{s[m]:.2f}" for m, _ in TABLE_METRICS) if s else ("-" for _ in TABLE_METRICS)),
            )  # fmt: skip
        console.print(table)
    return result
