"""Atomic file writes: readers see the old file or the new one, never a half-written one.

The temporary copy is ``.<name>.tmp-<pid>`` beside the target; a crash can leave one behind, and
:func:`remove_stale_tmp` (called when a run starts in a folder it has locked) deletes them. A
failed write (disk full, read-only) removes its temporary copy and raises a one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path

from hoigen.data.faults import kill_point, write_error

TMP_MARK = ".tmp-"


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = False) -> bool:
    """Write ``data`` to ``path`` through a temporary name; skip (False) if the file already holds it."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        kill_point("atomic-tmp")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def is_tmp(path: Path) -> bool:
    """A temporary copy left by an atomic write or a shard writer."""
    return TMP_MARK in Path(path).name


def remove_stale_tmp(folder: Path, recursive: bool = False) -> list[Path]:
    """Delete temporary copies (``*.tmp-<pid>``) under ``folder``; returns what was removed.

    Only call this while holding the folder's lock: a live writer's temporary file would go too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(f"*{TMP_MARK}*") if recursive else folder.glob(f"*{TMP_MARK}*")
    removed = []
    for p in sorted(found):
        if p.is_file() and is_tmp(p):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
