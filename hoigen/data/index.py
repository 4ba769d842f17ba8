"""``index.parquet`` and ``run.json``: what a stage's output folder holds, and how it was made.

Each finished shard has its index rows in ``_index/shard-%06d.parquet``, written before the shard
is renamed into place. ``index.parquet`` is the concatenation of those parts in shard order, so
ranks, workers and resumed runs all end with the same index. ``run.json`` records the command,
the configuration, the seed, the models and assets used, and the package versions.
"""

from __future__ import annotations

import hashlib
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
from hoigen.data.contract import INDEX_FILE, RUN_FILE
from hoigen.data.schema import index_row
from hoigen.data.shards import list_shards, read_shard
from hoigen.errors import HoigenError

PARTS_DIR = "_index"
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "smplx", "trimesh", "pyrender", "webdataset")


#: Schema metadata keys of an index part: the published shard's size in bytes and its sha256, and a
#: sha256 of the part's own rows (so a damaged part is never trusted either).
SIZE_KEY, SHA_KEY, ROWS_KEY = b"hoigen.shard_size", b"hoigen.shard_sha256", b"hoigen.rows_sha256"


def rows_digest(table: pa.Table) -> str:
    """A sha256 of a table's rows (canonical JSON of ``to_pylist``)."""
    text = json.dumps(table.to_pylist(), sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _table_bytes(rows: list[dict[str, Any]] | pa.Table, meta: dict[bytes, bytes] | None = None) -> bytes:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    if not isinstance(rows, pa.Table) and not rows:
        table = pa.table({"key": pa.array([], pa.string())})
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def part_path(out_dir: Path, shard: str) -> Path:
    return Path(out_dir) / PARTS_DIR / shard.replace(".tar", ".parquet")


def file_checksum(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write_part(out_dir: Path, shard: str, rows: list[dict[str, Any]], checksum: tuple[int, str] | None = None) -> None:
    """Write the index rows of one shard (before the shard itself is published) with its size and sha256."""
    path = part_path(out_dir, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows) if rows else pa.table({"key": pa.array([], pa.string())})
    meta = {ROWS_KEY: rows_digest(table).encode()}
    if checksum is not None:
        meta.update({SIZE_KEY: str(checksum[0]).encode(), SHA_KEY: checksum[1].encode()})
    atomic_write_bytes(path, _table_bytes(table, meta))


def read_part(part: Path) -> tuple[pa.Table, tuple[int, str] | None] | None:
    """An index part's rows and the (size, sha256) it records for its shard; None when it is missing,
    unreadable, its rows no longer match their recorded digest, or its bytes are not what writing them gives."""
    try:
        table = pq.read_table(part)
        meta = table.schema.metadata or {}
        if meta.get(ROWS_KEY, b"").decode() != rows_digest(table.replace_schema_metadata(None)):
            return None
        checksum = (int(meta[SIZE_KEY]), meta[SHA_KEY].decode()) if SHA_KEY in meta else None
        if _table_bytes(table, dict(meta)) != Path(part).read_bytes():
            return None  # damage outside the rows (statistics, padding): parts are written deterministically
    except (OSError, KeyError, ValueError, UnicodeDecodeError, pa.ArrowException):
        return None
    return table.replace_schema_metadata(None), checksum


def part_checksum(part: Path) -> tuple[int, str] | None:
    """The (size, sha256) an intact index part records for its shard; None when absent or damaged."""
    got = read_part(part) if Path(part).exists() else None
    return None if got is None else got[1]


def shard_problem(shard: Path, folder: Path | None = None) -> str | None:
    """Why a published shard does not match the checksum its index part records (None: it matches).

    A shard without a readable part (or a part without a checksum, as older runs wrote) is a problem too."""
    part = part_path(folder or shard.parent, shard.name)
    want = part_checksum(part) if part.exists() else None
    if want is None:
        return f"{part} is missing or damaged"
    size, sha = file_checksum(shard)
    if size != want[0]:
        return f"{size} bytes, its index part says {want[0]}"
    if sha != want[1]:
        return "its sha256 differs from its index part's"
    return None


def rows_from_shard(shard_path: Path) -> list[dict[str, Any]]:
    """Recompute a shard's index rows by reading its ``ann.json`` and ``prompt.txt`` members."""
    return [index_row(s, shard_path.name) for s in read_shard(shard_path, fields=("ann.json", "prompt.txt"))]


def _joined(out_dir: Path, write_parts: bool) -> pa.Table:
    tables = []
    for shard in list_shards(out_dir):
        part = part_path(out_dir, shard.name)
        if not part.exists():
            if not write_parts:
                tables.append(pa.Table.from_pylist(rows_from_shard(shard)))
                continue
            write_part(out_dir, shard.name, rows_from_shard(shard), file_checksum(shard))
        got = read_part(part)
        if got is None:
            raise HoigenError(
                f"{part}: damaged index part (unreadable, or its rows differ from their digest); rerun the "
                f"command that wrote {out_dir} (it remakes {shard.name} and its part)"
            )
        if got[0].num_rows:
            tables.append(got[0])
    if not tables:
        return pa.table({"key": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="default")


def build_index(out_dir: Path) -> pa.Table:
    """Join the parts of every finished shard into ``index.parquet`` (rebuilding missing parts)."""
    out_dir = Path(out_dir)
    table = _joined(out_dir, write_parts=True)
    atomic_write_bytes(out_dir / INDEX_FILE, _table_bytes(table))
    return table


def read_index(folder: Path) -> pa.Table:
    """A folder's index, joined in memory from its index parts (each checked against its digest), so a
    damaged ``index.parquet`` is never trusted and reading never writes; without parts, ``index.parquet``."""
    folder = Path(folder)
    if (folder / PARTS_DIR).is_dir() or not (folder / INDEX_FILE).exists():
        return _joined(folder, write_parts=False)
    path = folder / INDEX_FILE
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise HoigenError(
            f"{path}: unreadable ({' '.join(str(exc).split())}); delete it and run hoigen merge {folder} to rebuild it"
        ) from None


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
NEUTRAL_OPTIONS = {"--shard-index": 1, "--num-shards": 1, "--workers": 1, "--quiet": 0, "-q": 0, "--overwrite": 0}


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
