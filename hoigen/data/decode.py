"""Decode shard fields the way hoigen means them, from any reader: depth as uint16 millimetres and
``seg.png`` as labels (0 background, 1 hand, 2 object), where webdataset's standard decoders
(``"pil"``, ``"rgb8"``, ``"l"``) turn the 16-bit depth into 8 bits and single-channel maps into RGB.

- webdataset: ``wds.WebDataset(urls, shardshuffle=False).decode(hoigen.data.decode.wds_handler)``.
- Hugging Face ``datasets`` (PIL images in the rows): ``maps(row)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hoigen.data.codec import decode_field

IMAGE_EXTS = ("png", "jpg", "jpeg")


def wds_handler(key: str, data: bytes) -> Any:
    """A webdataset decoder handler: images as numpy (RGB uint8, or 2-D keeping uint16 depth and
    uint8 labels), ``.json`` as objects, ``.txt`` as text; None (next handler) for anything else."""
    ext = key.rsplit(".", 1)[-1].lower()
    if ext in (*IMAGE_EXTS, "json", "txt"):
        return decode_field(key, data, "webdataset")
    return None


def as_array(value: Any) -> np.ndarray:
    """A decoded image field (numpy, PIL image or encoded bytes) as numpy, keeping 16-bit values."""
    if isinstance(value, (bytes, bytearray)):
        return decode_field("x.png", bytes(value))
    if isinstance(value, dict) and "bytes" in value:  # a datasets Image cell read without decoding
        return decode_field("x.png", value["bytes"])
    if hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        arr = np.asarray(value)
        return arr.astype(np.uint16) if value.mode in ("I", "I;16", "I;16B") else arr
    return np.asarray(value)


def maps(sample: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"depth_mm": uint16 (H,W), "seg": uint8 labels (H,W)}`` of a sample or a datasets row
    (only the fields it holds)."""
    out: dict[str, np.ndarray] = {}
    if sample.get("depth.png") is not None:
        out["depth_mm"] = as_array(sample["depth.png"]).astype(np.uint16)
    if sample.get("seg.png") is not None:
        seg = as_array(sample["seg.png"])
        out["seg"] = (seg[..., 0] if seg.ndim == 3 else seg).astype(np.uint8)
    return out
