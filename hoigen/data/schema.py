"""The sample schema: keys, seeds and the index row every stage writes (see DESIGN.md).

One WebDataset sample is one frame of one grasp seen from one camera. Its key is
``{object_id}_{grasp:04d}_{frame:03d}_{view:02d}``; the grasp stage has no camera yet, so its keys
stop after the frame (``{object_id}_{grasp:04d}_{frame:03d}``) and render appends the view.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from hoigen.data.contract import ANN, PROMPT

Sample = dict[str, Any]

OBJECT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# The member names, label values and encodings are in hoigen.data.contract.
__all__ = [
    "OBJECT_ID_RE",
    "Sample",
    "derive_seed",
    "index_row",
    "parse_key",
    "sample_key",
]


def sample_key(object_id: str, grasp: int, frame: int, view: int | None = None) -> str:
    """Build a sample key; object ids are lower-case ``[a-z0-9-]`` (no dot, no underscore)."""
    if not OBJECT_ID_RE.match(object_id):
        raise ValueError(f"object id {object_id!r} must match [a-z0-9][a-z0-9-]*")
    key = f"{object_id}_{grasp:04d}_{frame:03d}"
    return key if view is None else f"{key}_{view:02d}"


def parse_key(key: str) -> dict[str, Any]:
    """Split a key into object id, grasp, frame and (if present) view."""
    parts = key.split("_")
    out: dict[str, Any] = {"object": parts[0], "grasp": int(parts[1]), "frame": int(parts[2])}
    if len(parts) > 3:
        out["view"] = int(parts[3])
    return out


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from the run seed and any labels (shard index, sample key, ...).

    Seeds derive from names, not from processing order, so results do not depend on how shards
    are split between workers or ranks.
    """
    text = "|".join([str(int(seed)), *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def index_row(sample: Sample, shard: str) -> dict[str, Any]:
    """The ``index.parquet`` row of a sample: key, shard, object, category, ids and grasp metrics."""
    ann = sample.get(ANN, {})
    obj = ann.get("object", {})
    row: dict[str, Any] = {"key": sample["__key__"], "shard": shard}
    row.update(parse_key(sample["__key__"]))
    row["object"] = obj.get("id", row["object"])
    row["category"] = obj.get("category", "")
    row["hand_side"] = ann.get("hand", {}).get("side", "")
    for name, value in sorted(ann.get("grasp", {}).items()):
        if isinstance(value, (bool, int, float, str)):
            row[f"grasp_{name}"] = value
    if PROMPT in sample:
        row["prompt"] = sample[PROMPT]
    return row
