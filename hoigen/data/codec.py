"""Encoding and decoding of sample fields, chosen by the member's extension.

A sample in memory is a dict: ``"__key__"`` plus one entry per field, named as the tar member's
suffix (``"ann.json"``, ``"seg.png"``, ...). Images are numpy arrays in RGB order (never BGR);
single-channel PNGs stay 2-D and keep their dtype (uint8 segmentation, uint16 depth). Encoding is
deterministic, so the same sample always gives the same bytes.
"""

from __future__ import annotations

import io
import json
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


def decode_field(name: str, data: bytes, where: str = "") -> Any:
    """Decode one tar member; ``where`` names the shard in error messages."""
    ext = name.rsplit(".", 1)[-1]
    try:
        if ext == "json":
            return json.loads(data.decode("utf-8"))
        if ext in ("png", "jpg", "jpeg"):
            check_png_size(data, f"{where}: member {name}")
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ValueError("not a valid image")
            if arr.ndim == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
            return arr
        if ext == "txt":
            return data.decode("utf-8")
        if ext == "npy":  # data only: an object array (a pickle) is refused
            return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HoigenError(
            f"{where}: member {name} is not valid .{ext} ({exc}); delete the shard and rerun the stage that wrote it"
        ) from None
    return data
