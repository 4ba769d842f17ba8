"""One writer per output folder: a lock file per rank, held with ``flock`` while a run writes.

A run that writes a folder holds ``<folder>/.lock-rank-<r>-of-<n>`` (a single-process run and
export hold ``.lock-rank-0-of-1``). The file says who holds it (pid, host, command, since, and a
fingerprint of the run's stage, seed and configuration); the lock itself is the kernel's ``flock``
on that file, so it dies with its process: a lock left by a SIGKILLed or crashed run is free again
at once, and of two processes taking over a stale lock the kernel lets exactly one win (no
pid-probing race). After locking, the holder checks that the path still names the inode it locked
(a releasing holder unlinks the file; a taker that opened the old inode retries).

A second run is refused with a one-line error naming the holder when another live lock in the
folder is

- the same rank of the same split (two copies of one command), or
- a different split (``--num-shards`` differs: both would write the same shards), or
- another run (a different stage, seed or configuration).

Within one process the lock is re-entrant (:func:`folder_lock`): the grasp stage locks before it
saves the objects, and the runner's own lock call inside then reuses it.

Ranks of one multi-rank run (same fingerprint, same number of ranks, different rank) share the
folder. Both checks happen after taking one's own lock, so of two conflicting runs starting at the
same instant at least one refuses. Where the file system has no ``flock`` (some network file
systems), the run warns and goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoigen.data.faults import write_error
from hoigen.errors import HoigenError

LOCK_GLOB = ".lock-rank-*-of-*"
RETRY_S = 0.5  # how long taking one's own lock is retried (another run's probe may hold it a moment)
PROBE_RETRY_S = 0.1  # probes are shared locks, blocked only by holders (or a momentary stale-lock sweep)


def lock_name(rank: int, world: int) -> str:
    return f".lock-rank-{rank}-of-{world}"


def fingerprint(stage: str, seed: int, config: dict[str, Any]) -> str:
    """What makes two processes ranks of one run: the same stage, seed and configuration."""
    text = json.dumps({"stage": stage, "seed": seed, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def _read_holder(path: Path) -> dict[str, Any]:
    for _ in range(5):
        try:
            text = path.read_text()
            if text:
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)  # the holder may be between truncate and write
    return {}


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} (rank {holder.get('rank')} of {holder.get('world')}, "
        f"'{holder.get('command')}', since {holder.get('since')})"
    )


def _try_flock(fd: int, shared: bool = False) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def held_by_live_process(path: Path) -> bool:
    """True when a live process holds the lock file ``path`` (probed with a shared, non-blocking flock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        deadline = time.monotonic() + PROBE_RETRY_S
        while True:
            try:
                if _try_flock(fd, shared=True):
                    return False
            except OSError as exc:  # no flock here: trust nothing, treat as free
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    return False
                raise
            if time.monotonic() > deadline:
                return True
            time.sleep(0.05)
    finally:
        os.close(fd)


@dataclass
class FolderLock:
    """The lock of one rank on one output folder; use as a context manager."""

    folder: Path
    rank: int = 0
    world: int = 1
    fingerprint: str = ""
    _fd: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.folder) / lock_name(self.rank, self.world)

    def acquire(self) -> FolderLock:
        folder = Path(self.folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(folder, exc) from None
        fd = self._lock_own()
        if fd is None:
            return self  # no flock on this file system: warned, unlocked
        self._fd = fd
        try:
            self._refuse_conflicts()
            self._write_holder()
        except BaseException:
            self.release()
            raise
        return self

    def _lock_own(self) -> int | None:
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            try:
                got = _try_flock(fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    from hoigen.data.progress import info

                    info(f"warning: {self.folder}: no file locking here (flock: {exc.strerror}); running unlocked")
                    return None
                raise
            if got:
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    return fd
                os.close(fd)  # locked an inode its holder unlinked on release: take the new file
                continue
            os.close(fd)
            if time.monotonic() > deadline:
                raise HoigenError(
                    f"{self.folder}: another run is writing this folder: {describe(_read_holder(self.path))}; "
                    "wait for it to finish or write to another --out"
                )
            time.sleep(0.05)

    def _refuse_conflicts(self) -> None:
        for other in sorted(Path(self.folder).glob(LOCK_GLOB)):
            if other.name == self.path.name or not held_by_live_process(other):
                continue
            holder = _read_holder(other)
            if holder.get("world") != self.world:
                why = f"it splits the shards into {holder.get('world')} ranks, this run into {self.world}"
            elif holder.get("fingerprint") != self.fingerprint:
                why = "it is another run (different stage, seed or options)"
            else:
                continue  # another rank of this run
            raise HoigenError(
                f"{self.folder}: another run is writing this folder: {describe(holder)}; {why}; "
                "wait for it to finish or write to another --out"
            )

    def _write_holder(self) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rank": self.rank,
            "world": self.world,
            "fingerprint": self.fingerprint,
        }
        data = json.dumps(holder, sort_keys=True).encode()
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def others_alive(self) -> bool:
        """Whether another live process holds a lock in this folder (e.g. another rank)."""
        return any(
            p.name != self.path.name and held_by_live_process(p) for p in sorted(Path(self.folder).glob(LOCK_GLOB))
        )

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody can be mid-takeover of it
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_dead_locks(folder: Path) -> list[Path]:
    """Delete lock files no live process holds (left by killed runs); returns them."""
    removed = []
    for p in sorted(Path(folder).glob(LOCK_GLOB)):
        if held_by_live_process(p):
            continue
        fd = os.open(p, os.O_RDWR)
        try:
            if _try_flock(fd) and os.path.exists(p) and os.fstat(fd).st_ino == os.stat(p).st_ino:
                p.unlink()
                removed.append(p)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


_HELD: dict[tuple[str, int, int], list[Any]] = {}


@contextlib.contextmanager
def folder_lock(folder: Path, rank: int = 0, world: int = 1, fingerprint: str = "") -> Iterator[FolderLock]:
    """Hold the folder's rank lock for the ``with`` block; nested calls in one process share it."""
    key = (str(Path(folder).resolve()), rank, world)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield _HELD[key][0]
        finally:
            _HELD[key][1] -= 1
        return
    lock = FolderLock(Path(folder), rank, world, fingerprint).acquire()
    _HELD[key] = [lock, 1]
    try:
        yield lock
    finally:
        del _HELD[key]
        lock.release()
