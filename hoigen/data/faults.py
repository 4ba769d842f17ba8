"""Fault injection for the crash tests, and the one translation of OS write errors into user errors.

``HOIGEN_TEST_KILL_AT=<point>[#<n>][@TERM|@INT]`` makes the process SIGKILL itself (or send itself
SIGTERM/SIGINT) the n-th time (default the first) it passes ``<point>``; several points may be
given, comma-separated (the first one reached fires). The points, named where they are called:

- ``shard-sample``: a sample was added to a shard still under its temporary name;
- ``shard-closed``: the temporary shard is complete and synced, its index part not yet written;
- ``shard-part``: the index part is written, the shard not yet renamed;
- ``shard-published``: the shard is renamed into place;
- ``atomic-tmp``: a small file's temporary copy is written, not yet renamed (every
  ``atomic_write_bytes`` that changes a file passes it);
- ``index``: every shard exists, ``index.parquet`` not yet joined;
- ``export-done``: export wrote every file but not yet ``run.json``, its completion mark.

The hook costs one dictionary lookup when the variable is unset; users never set it.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter
from pathlib import Path

KILL_ENV = "HOIGEN_TEST_KILL_AT"
_passed: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """SIGKILL this process if ``HOIGEN_TEST_KILL_AT`` names ``name`` (and this is the n-th pass)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    _passed[name] += 1
    for item in spec.split(","):
        item, _, sig = item.strip().partition("@")
        point, _, nth = item.partition("#")
        if point == name and _passed[name] == int(nth or 1):
            os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))


_WHY = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large for this file system or limit",
}


def write_error(path: Path | str, exc: OSError) -> Exception:
    """A one-line :class:`HoigenError` for a failed write to ``path`` (other OS errors pass through)."""
    from hoigen.errors import HoigenError

    why = _WHY.get(exc.errno or 0)
    if why is None:
        return exc
    return HoigenError(
        f"{path}: cannot write ({why}: {exc.strerror or exc}); finished shards are kept and this one is not "
        "marked done; free space or fix permissions, then rerun the same command"
    )


def reset_passes() -> None:
    """Forget how often each point was passed (a forked child starts counting afresh)."""
    _passed.clear()
