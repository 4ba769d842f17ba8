"""Counts kept beside a stage's shards: one small JSON file per shard, summed into ``run.json``.

A shard stage that counts something per shard (render's skipped views, synthesize's image filter)
writes ``OUT/<folder>/shard-NNNNNN.json`` atomically *before* the shard is published, so a
finished shard always has its record and a resumed shard rewrites its own. The stage's
:meth:`hoigen.data.runner.Stage.tally` sums the records of every shard into ``run.json``; it runs
when the stage finishes and again after ``hoigen merge`` has copied the ranks' records together
(the stage lists these folders in :attr:`~hoigen.data.runner.Stage.sidecars`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.contract import RUN_FILE, read_run_json

_RECORD = re.compile(r"shard-(\d{6})\.json")


def write_shard_record(out_dir: Path, folder: str, shard: int, record: dict[str, Any]) -> None:
    """``OUT/<folder>/shard-NNNNNN.json`` holding ``record`` (atomic)."""
    path = Path(out_dir) / folder
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / f"shard-{int(shard):06d}.json", json.dumps(record, sort_keys=True).encode() + b"\n")


def shard_records(out_dir: Path, folder: str) -> list[dict[str, Any]]:
    """Every shard's record in ``OUT/<folder>`` in shard order (temporary files skipped)."""
    path = Path(out_dir) / folder
    if not path.is_dir():
        return []
    named = sorted((m.group(1), f) for f in path.iterdir() if (m := _RECORD.fullmatch(f.name)))
    return [json.loads(f.read_text()) for _, f in named]


def update_run(out_dir: Path, **fields: Any) -> dict[str, Any]:
    """Set ``fields`` in ``OUT/run.json`` (atomic) and return the record."""
    run = read_run_json(out_dir)
    run.update(fields)
    data = json.dumps(run, indent=2, sort_keys=True, default=str).encode() + b"\n"
    atomic_write_bytes(Path(out_dir) / RUN_FILE, data)
    return run
