"""WebDataset shards: a deterministic tar writer that only ever shows finished shards, and a reader.

A shard is ``shard-%06d.tar``; each sample is a run of members ``<key>.<field>`` (WebDataset
takes the key up to the first dot). The writer writes ``shard-%06d.tar.tmp-<pid>`` and renames it
when the shard is complete, so a crash never leaves a shard that looks finished. Members carry a
fixed mtime, owner and mode, and fields are written in sorted order: the same samples always give
byte-identical shards.

Reading is lazy: :func:`read_shard` yields :class:`LazySample` mappings that hold each member's bytes
and decode a member (strictly, :func:`hoigen.data.codec.decode_field`) on first access, so a stage pays
only for what it reads. The writer copies a member's original bytes when it was never replaced (and
re-encodes a decoded ``.json``, which a stage may have changed in place), so members a stage passes
through are never decoded or re-encoded; copied bytes are checked first (:func:`hoigen.data.codec.check_field`).
``HOIGEN_EAGER_DECODE=1`` decodes every member on read into plain dicts, as before (for benchmarks).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from hoigen.data.codec import check_field, decode_field, encode_field
from hoigen.data.faults import kill_point, write_error
from hoigen.data.schema import Sample
from hoigen.errors import HoigenError

SHARD_PATTERN = "shard-%06d.tar"
TMP_MARK = ".tmp-"
MTIME = 0
EAGER_ENV = "HOIGEN_EAGER_DECODE"  # "1": read_shard decodes every member into plain dicts (the old way)


class _Pending:
    """The value of a member read from the shard but not decoded yet (one instance; it pickles as itself)."""

    def __reduce__(self) -> str:
        return "_PENDING"


_PENDING = _Pending()


class LazySample(MutableMapping[str, Any]):
    """A sample read from a shard: ``"__key__"``, ``"__shard__"`` and one entry per member, each member
    decoded on first access (a bad member raises the same one-line :class:`HoigenError` as an eager read,
    naming the shard). Decoded arrays are read-only, so a member read but not replaced is unchanged and the
    writer copies its original bytes (change a map by assigning a new array)."""

    def __init__(self, meta: dict[str, Any], raw: dict[str, bytes], where: str) -> None:
        self._items: dict[str, Any] = {**meta, **dict.fromkeys(raw, _PENDING)}
        self._raw = dict(raw)  # original bytes of the members not replaced since reading
        self.where = where

    def __getitem__(self, name: str) -> Any:
        value = self._items[name]
        if value is _PENDING:
            value = decode_field(name, self._raw[name], self.where)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
            self._items[name] = value
        return value

    def __setitem__(self, name: str, value: Any) -> None:
        self._items[name] = value
        self._raw.pop(name, None)

    def __delitem__(self, name: str) -> None:
        del self._items[name]
        self._raw.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        names = [n + ("" if self._items[n] is not _PENDING else " (undecoded)") for n in self._items]
        return f"LazySample({', '.join(names)})"

    def decoded(self, name: str) -> bool:
        """Whether member ``name`` holds a value (decoded or assigned) rather than undecoded bytes."""
        return self._items[name] is not _PENDING

    def original(self, name: str) -> bytes | None:
        """The shard bytes of member ``name`` while it is unchanged (None once replaced, or for ``__key__``)."""
        return self._raw.get(name)

    def copy(self) -> LazySample:
        """A shallow copy that keeps undecoded members undecoded."""
        out = LazySample({}, {}, self.where)
        out._items, out._raw = dict(self._items), dict(self._raw)
        return out

    def encoded(self, name: str) -> bytes:
        """The bytes the writer stores for member ``name``: the original bytes when it was never replaced
        (checked when never decoded), else its value encoded (a decoded ``.json`` is always re-encoded)."""
        data, value = self._raw.get(name), self._items[name]
        if data is not None and value is _PENDING:
            check_field(name, data, self.where)
            return data
        if data is not None and not isinstance(value, (dict, list)):  # an unchanged read-only array, a text
            return data
        return encode_field(name, self[name])


def member_bytes(sample: MutableMapping[str, Any], name: str) -> bytes:
    """The bytes of one member as the writer stores it (original bytes of an unchanged lazy member)."""
    if isinstance(sample, LazySample):
        return sample.encoded(name)
    return encode_field(name, sample[name])


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

    def write(self, sample: Sample | LazySample) -> None:
        key = sample["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        try:
            for field in sorted(k for k in sample if not k.startswith("__")):
                data = member_bytes(sample, field)
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


def write_shard(path: Path, samples: Iterable[Sample | LazySample]) -> int:
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
    """Yield the samples of a shard (``fields`` limits which members are read): :class:`LazySample`
    mappings that decode a member on first access (every member at once under ``HOIGEN_EAGER_DECODE=1``);
    with ``decode=False``, plain dicts of raw bytes.

    A truncated or corrupt tar raises a one-line :class:`HoigenError` naming the shard.
    """
    path = Path(path)
    where = str(path)
    eager = decode and os.environ.get(EAGER_ENV) == "1"
    for key, raw in _raw_samples(path, fields):
        meta = {"__key__": key, "__shard__": path.name}
        if not decode:
            yield {**meta, **raw}
        elif eager:
            yield {**meta, **{name: decode_field(name, data, where) for name, data in raw.items()}}
        else:
            yield LazySample(meta, raw, where)


def _raw_samples(path: Path, fields: Iterable[str] | None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) per sample of a shard, in order; the tar's integrity is checked on the way."""
    wanted = set(fields) if fields is not None else None
    if not path.exists():
        raise HoigenError(f"{path}: shard not found; rerun the stage that writes it")
    key: str | None = None
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                name_key, field = base.split(".", 1)
                if key is not None and key != name_key:
                    yield key, raw
                    raw = {}
                key = name_key
                if wanted is not None and field not in wanted:
                    continue
                fobj = tar.extractfile(member)
                data = fobj.read() if fobj is not None else b""
                if len(data) != member.size:
                    raise EOFError("member shorter than its header")
                raw[field] = data
            _check_end_marker(path, tar.offset)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise HoigenError(
            f"{path}: truncated or corrupt shard ({exc}); delete it and rerun the stage that wrote it"
        ) from None
    if key is not None:
        yield key, raw
