"""Encoding and decoding of sample fields, chosen by the member's extension.

A sample in memory is a dict: ``"__key__"`` plus one entry per field, named as the tar member's
suffix (``"ann.json"``, ``"seg.png"``, ...). Images are numpy arrays in RGB order (never BGR);
single-channel PNGs stay 2-D and keep their dtype (uint8 segmentation, uint16 depth). Encoding is
deterministic, so the same sample always gives the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import tempfile
import threading
import zlib
from typing import Any

import cv2
import numpy as np

from hoigen.errors import HoigenError
from hoigen.trust import check_png_size

JPEG_QUALITY = 95


def _encode_image(name: str, value: np.ndarray) -> bytes:
    arr = np.asarray(value)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{name}: images must be uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim != 2:
        raise TypeError(f"{name}: images must be (H,W) or (H,W,3), got {arr.shape}")
    if name.endswith(".png"):
        ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        if arr.dtype != np.uint8:
            raise TypeError(f"{name}: JPEG needs uint8")
        ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"{name}: image encoding failed")
    return buf.tobytes()


def encode_field(name: str, value: Any) -> bytes:
    """Encode one field by its extension (.json, .png, .jpg, .txt, .npy, .mp4/.bin raw)."""
    ext = name.rsplit(".", 1)[-1]
    if isinstance(value, bytes):
        return value
    if ext == "json":
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    if ext in ("png", "jpg", "jpeg"):
        return _encode_image(name, value)
    if ext == "txt":
        return str(value).encode("utf-8")
    if ext == "npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        return buf.getvalue()
    raise TypeError(f"{name}: no encoder for .{ext} (pass bytes)")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DECODE_LOCK = threading.Lock()
#: What libjpeg and libpng print for data they decode anyway ("Corrupt JPEG data: ...", "Premature end of
#: JPEG file", "libpng warning: ...") or give up on; captured from file descriptor 2 while decoding.
DECODER_SAYS = re.compile(r"JPEG|libpng|jpeg|Huffman|marker", re.IGNORECASE)


def check_png_chunks(data: bytes) -> None:
    """A ValueError when a PNG's chunk layout or any chunk's CRC is wrong, or it does not end with IEND."""
    pos, end = len(PNG_SIGNATURE), len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if pos + 12 + length > end:
            raise ValueError(f"chunk {kind!r} runs past the end of the data (truncated)")
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != crc:
            raise ValueError(f"CRC error in chunk {kind.decode('latin-1')!r} at byte {pos}")
        if kind == b"IEND":
            return
        pos += 12 + length
    raise ValueError("no IEND chunk (truncated)")


def strict_imdecode(data: bytes, flags: int) -> np.ndarray:
    """``cv2.imdecode`` that treats what libjpeg/libpng only warn about (corrupt data, a premature
    end, a bad CRC) as errors: a ValueError naming it. PNG chunk CRCs are checked first."""
    if data[:8] == PNG_SIGNATURE:
        check_png_chunks(data)
    with _DECODE_LOCK, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(captured.fileno(), 2)
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        said = captured.read()
    complaints = [line for line in said.decode("utf-8", "replace").splitlines() if DECODER_SAYS.search(line)]
    if said and not complaints:
        os.write(2, said)  # someone else's output (a progress bar) written meanwhile: pass it on
    if complaints:
        raise ValueError(" ".join(" ".join(complaints).split())[:200])
    if arr is None:
        raise ValueError("not a valid image")
    return arr


def _member_error(name: str, ext: str, exc: Exception, where: str) -> HoigenError:
    return HoigenError(
        f"{where}: member {name} is not valid .{ext} ({exc}); delete the shard and rerun the stage that wrote it"
    )


def check_field(name: str, data: bytes, where: str = "") -> None:
    """Check a member's bytes that are copied unchanged (never decoded) as strictly as :func:`decode_field`
    would: a PNG's chunk CRCs (any flipped bit or a cut shows there, at a fraction of a decode's cost),
    anything else decoded and dropped. A one-line :class:`HoigenError` like ``decode_field``'s."""
    ext = name.rsplit(".", 1)[-1]
    if ext == "png" and data[:8] == PNG_SIGNATURE:
        try:
            check_png_chunks(data)
        except ValueError as exc:
            raise _member_error(name, ext, exc, where) from None
        return
    decode_field(name, data, where)


def decode_field(name: str, data: bytes, where: str = "") -> Any:
    """Decode one tar member; ``where`` names the shard in error messages."""
    ext = name.rsplit(".", 1)[-1]
    try:
        if ext == "json":
            return json.loads(data.decode("utf-8"))
        if ext in ("png", "jpg", "jpeg"):
            check_png_size(data, f"{where}: member {name}")
            arr = strict_imdecode(data, cv2.IMREAD_UNCHANGED)
            if arr.ndim == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
            return arr
        if ext == "txt":
            return data.decode("utf-8")
        if ext == "npy":  # data only: an object array (a pickle) is refused
            return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _member_error(name, ext, exc, where) from None
    return data
