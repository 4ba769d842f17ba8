"""``index.parquet`` and ``run.json``: what a stage's output folder holds, and how it was made.

Each finished shard has its index rows in ``_index/shard-%06d.parquet``, written before the shard
is renamed into place. ``index.parquet`` is the concatenation of those parts in shard order, so
ranks, workers and resumed runs all end with the same index. ``run.json`` records the command,
the configuration, the seed, the models and assets used, and the package versions.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.card import write_card
from hoigen.data.schema import index_row
from hoigen.data.shards import list_shards, read_shard

INDEX_FILE = "index.parquet"
RUN_FILE = "run.json"
PARTS_DIR = "_index"
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "smplx", "trimesh", "pyrender", "webdataset")


def _table_bytes(rows: list[dict[str, Any]] | pa.Table) -> bytes:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def part_path(out_dir: Path, shard: str) -> Path:
    return Path(out_dir) / PARTS_DIR / shard.replace(".tar", ".parquet")


def write_part(out_dir: Path, shard: str, rows: list[dict[str, Any]]) -> None:
    """Write the index rows of one shard (before the shard itself is published)."""
    path = part_path(out_dir, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _table_bytes(rows) if rows else b"")


def rows_from_shard(shard_path: Path) -> list[dict[str, Any]]:
    """Recompute a shard's index rows by reading its ``ann.json`` and ``prompt.txt`` members."""
    return [index_row(s, shard_path.name) for s in read_shard(shard_path, fields=("ann.json", "prompt.txt"))]


def build_index(out_dir: Path) -> pa.Table:
    """Join the parts of every finished shard into ``index.parquet`` (rebuilding missing parts)."""
    out_dir = Path(out_dir)
    tables = []
    for shard in list_shards(out_dir):
        part = part_path(out_dir, shard.name)
        if not part.exists():
            write_part(out_dir, shard.name, rows_from_shard(shard))
        if part.stat().st_size:
            tables.append(pq.read_table(part))
    table = (
        pa.concat_tables(tables, promote_options="default") if tables else pa.table({"key": pa.array([], pa.string())})
    )
    atomic_write_bytes(out_dir / INDEX_FILE, _table_bytes(table))
    return table


def read_index(folder: Path) -> pa.Table:
    path = Path(folder) / INDEX_FILE
    return pq.read_table(path) if path.exists() else build_index(folder)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("hoigen", *VERSIONED_PACKAGES):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


#: Options that split or pace the work but never change the output; left out of run.json's command
#: so that every rank, worker count and resumed run records the same bytes.
NEUTRAL_OPTIONS = {"--shard-index": 1, "--num-shards": 1, "--workers": 1, "--quiet": 0, "-q": 0}


def run_command(argv: list[str] | None = None) -> str:
    """The command that remakes this folder: ``hoigen ARGS`` without split, worker and quiet options."""
    argv = list(sys.argv if argv is None else argv)
    args, i = [], 1
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in NEUTRAL_OPTIONS:
            i += 1 + (NEUTRAL_OPTIONS[name] if "=" not in argv[i] else 0)
            continue
        args.append(argv[i])
        i += 1
    prog = Path(argv[0]).name if argv else "hoigen"
    return " ".join(["hoigen" if prog in ("__main__.py", "-c", "-m", "") else prog, *args])


def write_run_json(out_dir: Path, stage: str, config: dict[str, Any], seed: int, extra: dict[str, Any]) -> None:
    """Record how this output folder was made (deterministic: no timestamps, no rank or worker options)."""
    record = {
        "stage": stage,
        "command": run_command(),
        "seed": seed,
        "config": config,
        "versions": versions(),
        **extra,
    }
    data = json.dumps(record, indent=2, sort_keys=True, default=str).encode() + b"\n"
    atomic_write_bytes(Path(out_dir) / RUN_FILE, data)
    write_card(out_dir, json.loads(data))


def read_run_json(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else {}


