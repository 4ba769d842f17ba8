"""WebDataset shards: a deterministic tar writer that only ever shows finished shards, and a reader.

A shard is ``shard-%06d.tar``; each sample is a run of members ``<key>.<field>`` (WebDataset
takes the key up to the first dot). The writer writes ``shard-%06d.tar.tmp-<pid>`` and renames it
when the shard is complete, so a crash never leaves a shard that looks finished. Members carry a
fixed mtime, owner and mode, and fields are written in sorted order: the same samples always give
byte-identical shards.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hoigen.data.codec import decode_field, encode_field
from hoigen.data.faults import kill_point, write_error
from hoigen.data.schema import Sample
from hoigen.errors import HoigenError

SHARD_PATTERN = "shard-%06d.tar"
TMP_MARK = ".tmp-"
MTIME = 0


def shard_name(index: int) -> str:
    return SHARD_PATTERN % index


def shard_index(path: Path | str) -> int:
    """The index of ``shard-000012.tar`` (12)."""
    return int(Path(path).name.split("-", 1)[1].split(".", 1)[0])


def list_shards(folder: Path) -> list[Path]:
    """Finished shards of a folder, sorted; temporary files are never listed."""
    return sorted(p for p in Path(folder).glob("shard-*.tar") if p.is_file())


def remove_partial(folder: Path, index: int) -> None:
    """Delete temporary files left by an interrupted write of shard ``index`` (and of its index part)."""
    folder = Path(folder)
    part = shard_name(index).replace(".tar", ".parquet")
    for tmp in [*folder.glob(shard_name(index) + TMP_MARK + "*"), *folder.glob(f"_index/.{part}{TMP_MARK}*")]:
        tmp.unlink(missing_ok=True)


class ShardWriter:
    """Write samples to one shard; ``close()`` publishes it, ``abort()`` (or an exception) drops it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}{TMP_MARK}{os.getpid()}")
        try:
            self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self._open = True

    def write(self, sample: Sample) -> None:
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        try:
            for field in sorted(k for k in sample if not k.startswith("__")):
                data = encode_field(field, sample[field])
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mtime, info.mode = len(data), MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                self._tar.addfile(info, io.BytesIO(data))
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from None
        self.count += 1
        kill_point("shard-sample")

    def finish(self) -> None:
        """Complete and sync the temporary file (the shard is not yet visible)."""
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from None
        kill_point("shard-closed")

    def publish(self) -> Path:
        """Rename the finished temporary file to the shard's name."""
        os.replace(self.tmp, self.path)
        self._open = False
        kill_point("shard-published")
        return self.path

    def close(self) -> Path:
        self.finish()
        return self.publish()

    def abort(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            try:
                self._tar.close()
            except OSError:
                pass
            self._file.close()
        except OSError:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard(path: Path, samples: Iterable[Sample]) -> int:
    """Write all ``samples`` to ``path`` atomically; returns the number written."""
    with ShardWriter(path) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.count


def _check_end_marker(path: Path, offset: int) -> None:
    """A complete tar ends with two zero blocks; tarfile silently stops at a cut, so check."""
    with open(path, "rb") as f:
        f.seek(offset)
        end = f.read(2 * tarfile.BLOCKSIZE)
    if len(end) < 2 * tarfile.BLOCKSIZE or end.strip(b"\0"):
        raise EOFError(f"no end-of-archive marker after byte {offset}")


def read_shard(path: Path, fields: Iterable[str] | None = None, decode: bool = True) -> Iterator[Sample]:
    """Yield the samples of a shard, decoded by extension (``fields`` limits which are read).

    A truncated or corrupt tar raises a one-line :class:`HoigenError` naming the shard.
    """
    path = Path(path)
    wanted = set(fields) if fields is not None else None
    if not path.exists():
        raise HoigenError(f"{path}: shard not found; rerun the stage that writes it")
    current: Sample | None = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                key, field = base.split(".", 1)
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": path.name}
                if wanted is not None and field not in wanted:
                    continue
                fobj = tar.extractfile(member)
                data = fobj.read() if fobj is not None else b""
                if len(data) != member.size:
                    raise EOFError("member shorter than its header")
                current[field] = decode_field(field, data, str(path)) if decode else data
            _check_end_marker(path, tar.offset)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise HoigenError(
            f"{path}: truncated or corrupt shard ({exc}); delete it and rerun the stage that wrote it"
        ) from None
    if current is not None:
        yield current
