"""A run's identity: what makes two runs into one folder the same run, and the checks made on ``--out``
before a run writes anything.

The identity is the stage, the seed, the semantic options (``run.json``'s ``config``) and the
input's own fingerprint (the ``fingerprint`` of the input folder's ``run.json``, so a regenerated
or different input is a different run). Its hash, the run's ``fingerprint``, is written into
``run.json`` when a run starts (a sink, which writes ``run.json`` last, writes :data:`START_FILE`
first). A rerun resumes only when its fingerprint matches; otherwise it stops with one line naming
the first differing option and the way out: another ``--out``, or ``--overwrite``, which removes
that stage's own files (and nothing else) and starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from hoigen.data.atomic import atomic_write_bytes
from hoigen.data.contract import INDEX_FILE, OBJECTS_FILE, RUN_FILE
from hoigen.errors import HoigenError
from hoigen.options import UsageError, flag_of

START_FILE = ".run-start.json"  # a sink's identity, written when it starts (its run.json comes last)
SINKS = ("export",)


def identity(stage: str, seed: int, config: dict[str, Any], input_fp: str | None) -> dict[str, Any]:
    """The fields that make a run (JSON-able)."""
    return {"stage": stage, "seed": seed, "config": config, "input_fingerprint": input_fp}


def fingerprint_of(ident: dict[str, Any]) -> str:
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, None when absent; a damaged one is a one-line error."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise HoigenError(
            f"{path}: unreadable ({' '.join(str(exc).split())}); the folder's record is damaged: "
            "rerun with --overwrite (or another --out)"
        ) from None
    if not isinstance(data, dict):
        raise HoigenError(f"{path}: not a JSON object; rerun with --overwrite (or another --out)")
    return data


def input_fingerprint(in_dir: Path | None) -> str | None:
    """The input folder's own fingerprint (its run.json's; older folders: a hash of its stage, seed and config)."""
    if in_dir is None:
        return None
    run = _read_json(Path(in_dir) / RUN_FILE) or {}
    if isinstance(run.get("fingerprint"), str):
        fields = {k: run.get(k) for k in ("stage", "seed", "config", "input_fingerprint")}
        if fingerprint_of(fields) != run["fingerprint"]:  # the record itself was changed since it was written
            raise HoigenError(
                f"{Path(in_dir) / RUN_FILE}: damaged (its fingerprint does not match its stage, seed and options); "
                f"rerun the stage that wrote {in_dir} with --overwrite"
            )
        return run["fingerprint"]
    return fingerprint_of({k: run.get(k) for k in ("stage", "seed", "config")})


def recorded_identity(out_dir: Path) -> dict[str, Any] | None:
    """The identity of the run that wrote ``out_dir`` (run.json, else a sink's start file); None: none."""
    for name in (RUN_FILE, START_FILE):
        data = _read_json(Path(out_dir) / name)
        if data is not None:
            return data
    return None


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first difference between a recorded identity and this run's, in words (None: the same run)."""
    if old.get("stage") != new["stage"]:
        return f"it holds {old.get('stage')!r} output"
    if old.get("seed") != new["seed"]:
        return f"--seed differs (the folder has {old.get('seed')}, this run {new['seed']})"
    old_cfg, new_cfg = old.get("config") or {}, new["config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            return (
                f"{flag_of(key)} differs (the folder has {_describe(old_cfg.get(key))}, "
                f"this run {_describe(new_cfg.get(key))})"
            )
    if old.get("input_fingerprint") != new["input_fingerprint"]:
        return "its input (--in) differs from this run's (another folder, or the input was remade)"
    return None


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_not_input(out_dir: Path, in_dir: Path | None) -> None:
    """``--out`` equal to ``--in`` is a usage error (checked before the input is even read)."""
    if in_dir is not None and _same_folder(Path(out_dir), Path(in_dir)):
        raise UsageError(f"{out_dir}: --out is the input folder (--in); a stage never writes into its input")


def check_out(out_dir: Path, in_dir: Path | None, ident: dict[str, Any], overwrite: bool) -> bool:
    """Refuse an ``--out`` this run must not write (before anything is written); True: the folder holds
    another run of this stage that ``--overwrite`` is to remove first."""
    out_dir = Path(out_dir)
    stage = ident["stage"]
    check_not_input(out_dir, in_dir)
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir}: --out is a file, not a folder; pass another --out")
    old = recorded_identity(out_dir)
    if old is None:
        if any(out_dir.glob("shard-*.tar")) and not overwrite:
            raise HoigenError(
                f"{out_dir}: holds shards but no run.json, so they cannot be resumed; pass another --out, "
                f"or --overwrite to remove them"
            )
        return overwrite and any(out_dir.glob("shard-*.tar"))
    if old.get("stage") != stage:
        raise UsageError(
            f"{out_dir}: holds {old.get('stage')!r} output, not {stage!r}; pass another --out "
            "(a stage never writes into another stage's folder)"
        )
    diff = difference(old, ident)
    if diff is None:
        return False
    if not overwrite:
        raise HoigenError(
            f"{out_dir}: made by another {stage} run: {diff}; pass another --out, or --overwrite to remove "
            f"that run's files and start afresh"
        )
    return True


def remove_own_files(out_dir: Path, stage: str) -> None:
    """``--overwrite``: delete what ``stage`` wrote into ``out_dir`` (nothing else; the locks stay)."""
    out_dir = Path(out_dir)
    if stage in SINKS:  # an export folder is the export's own, file by file
        for p in out_dir.iterdir():
            if p.name.startswith(".lock-"):
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return
    from hoigen.data.card import CARD_FILE

    for p in out_dir.glob("shard-*.tar*"):
        p.unlink()
    names = [INDEX_FILE, RUN_FILE, CARD_FILE, START_FILE, "_index"]
    if (out_dir / OBJECTS_FILE).exists() and stage in ("grasp", "ingest", "render"):  # render: library distractors
        names += [OBJECTS_FILE, "objects"]
    for name in names:
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def write_start(out_dir: Path, ident: dict[str, Any], fp: str) -> None:
    """A sink's identity, written before its first file."""
    data = json.dumps({**ident, "fingerprint": fp}, indent=2, sort_keys=True, default=str).encode() + b"\n"
    atomic_write_bytes(Path(out_dir) / START_FILE, data)
