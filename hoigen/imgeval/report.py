"""Printing and saving evaluation summaries: a two-column table and JSON (NaN written as null)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hoigen.data.atomic import atomic_write_bytes


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def format_table(summary: dict[str, Any], keys: list[str]) -> list[str]:
    """``metric  value`` lines for ``keys`` of ``summary`` (floats with 4 decimals, NaN as "-")."""
    width = max(len(k) for k in keys)
    lines = []
    for key in keys:
        value = summary.get(key)
        if isinstance(value, float):
            text = f"{value:.4f}" if math.isfinite(value) else "-"
        else:
            text = str(value)
        lines.append(f"{key:<{width}}  {text:>10}")
    return lines


def write_json(path: Path, summary: dict[str, Any]) -> None:
    """The summary as JSON (sorted keys; NaN and inf become null)."""
    data = json.dumps(_clean(summary), indent=1, sort_keys=True, allow_nan=False) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), data.encode())
