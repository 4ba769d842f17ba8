"""The dataset card: ``README.md`` with a Hugging Face YAML header, written beside every ``run.json``
(every stage folder and every export).

The header holds ``license``, ``task_categories``, ``tags`` and, for shard folders, ``configs``
(the ``shard-*.tar`` files) and ``dataset_info.features``: a fixed schema of the shard contract's
fields (DESIGN.md), so ``datasets.load_dataset(<folder>)`` reads every folder without inferring
types from early samples. Fields outside that schema (grasp metrics, which ``index.parquet`` holds
as ``grasp_<name>`` columns; ingest's ``dexycb`` block) are not loaded that way;
``load_dataset("webdataset", data_files=...)`` infers and loads everything. The body says how the
data was made: the hand model, the objects and the diffusion model, followed back through the
``input`` of each ``run.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hoigen.data.atomic import atomic_write_bytes

CARD_FILE = "README.md"
F, INT, B, S = "float64", "int64", "bool", "string"
VEC, MAT = {"list": F}, {"list": {"list": F}}

# the contract's ann.json fields, by the stage that adds them
_GRASP_ANN: dict[str, Any] = {
    "key": S,
    "hand": {"side": S, "model": S, "global_orient": VEC, "hand_pose": VEC, "betas": VEC, "transl": VEC,
             "joints3d": MAT},
    "object": {"id": S, "category": S, "mesh_sha256": S, "pose": MAT, "nocs_from_mesh": MAT},
    "trajectory": {"frame": INT, "frames": INT},
}
_IMAGE_ANN: dict[str, Any] = {
    "hand": {"joints2d": MAT, "joints_visible": {"list": B}},
    "camera": {"K": MAT, "world_to_cam": MAT, "width": INT, "height": INT},
}
_RENDER_ANN: dict[str, Any] = {
    "hand": {"joints_self_occluded": {"list": B}, "bbox": {"list": INT}, "bbox_visible": {"list": INT}},
    "object": {
        "bbox": {"list": INT},
        "bbox_visible": {"list": INT},
        "silhouette": {"px_count": INT, "bbox": {"list": INT}},
    },
    "camera": {"view": INT, "preset": S, "in_view": F},
    "lights": {"shading": S, "ambient": F, "direction": MAT, "color": MAT},
}
_GEN = {"model": S, "kind": S, "seed": INT, "steps": INT, "guidance": F, "scheduler": S, "size": INT}
RENDER_MAPS = ("normal.png", "seg.png", "skeleton.png", "depth.png", "nocs.png", "shade.png", "amodal.png")
INGEST_MAPS = ("image.jpg", "depth.png", "seg.png", "normal.png", "skeleton.png")

TASKS = {
    "grasp": ["other"],
    "render": ["keypoint-detection", "image-segmentation", "depth-estimation", "object-detection"],
    "ingest": ["keypoint-detection", "image-segmentation", "depth-estimation"],
    "synthesize": ["keypoint-detection", "image-segmentation", "depth-estimation", "object-detection",
                   "text-to-image"],
}
EXPORT_TASKS = {
    "nocs": ["object-detection", "image-segmentation", "depth-estimation"],
    "bop": ["object-detection", "image-segmentation", "depth-estimation"],
    "coco": ["keypoint-detection", "object-detection", "image-segmentation"],
}


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            nested = isinstance(v, dict) and isinstance(out.get(k), dict) and "list" not in v
            out[k] = _merge(out[k], v) if nested else v
    return out


def stage_schema(stage: str) -> dict[str, Any] | None:
    """The fixed feature schema of a stage's samples ({field: type}), None for folders without shards."""
    if stage == "grasp":
        return {"__key__": S, "ann.json": _GRASP_ANN}
    if stage == "ingest":
        return {"__key__": S, "ann.json": _merge(_GRASP_ANN, _IMAGE_ANN), **dict.fromkeys(INGEST_MAPS, "image")}
    if stage in ("render", "synthesize"):
        schema: dict[str, Any] = {"__key__": S, "ann.json": _merge(_GRASP_ANN, _IMAGE_ANN, _RENDER_ANN)}
        schema.update(dict.fromkeys(RENDER_MAPS, "image"))
        if stage == "synthesize":
            schema.update({"image.jpg": "image", "prompt.txt": S, "gen.json": _GEN})
        return schema
    return None


def _feature(name: str, kind: Any) -> dict[str, Any]:
    """One entry of the Hugging Face YAML feature list (``Features._to_yaml_list`` form)."""
    if isinstance(kind, str):
        return {"name": name, "dtype": kind} if name else {"dtype": kind}
    if "list" in kind:
        inner = kind["list"]
        body = inner if isinstance(inner, str) else _feature("", inner)
        if isinstance(body, dict) and set(body) == {"list"}:
            body = {"list": body["list"]}
        return {"name": name, "list": body} if name else {"list": body}
    struct = [_feature(k, v) for k, v in kind.items()]
    return {"name": name, "struct": struct} if name else {"struct": struct}


def features_yaml(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [_feature(name, kind) for name, kind in schema.items()]


def provenance(record: dict[str, Any], hops: int = 8) -> dict[str, Any]:
    """The hand model, objects and diffusion model behind a folder, from its run.json record and
    those of its inputs (followed through ``input``)."""
    found: dict[str, Any] = {"stages": []}
    current: dict[str, Any] | None = record
    for _ in range(hops):
        if not current:
            break
        found["stages"].append(current.get("stage", "?"))
        for key in ("hand_model", "objects", "diffusion_model"):
            if current.get(key) and key not in found:
                found[key] = current[key]
        pointer = current.get("input")
        path = Path(pointer) / "run.json" if pointer else None
        current = json.loads(path.read_text()) if path is not None and path.is_file() else None
    found["stages"].reverse()
    return found


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """A small YAML writer for the card header (dicts, lists, strings, numbers)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 2)
            else:
                lines.append(f"{pad}{k}: {json.dumps(v)}")
    else:
        for item in value:
            if isinstance(item, dict):
                sub = _yaml(item, indent + 2)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {json.dumps(item)}")
    return lines


def _licence(prov: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """MIT when every input is one of hoigen's own stand-ins, else ``other`` with the sources named."""
    notes = []
    hand = prov.get("hand_model") or {}
    if hand and not hand.get("embedded"):
        notes.append(f"hand model {hand.get('name')}: the MANO licence (non-commercial research use)")
    real_objects = [o for o in prov.get("objects") or [] if not str(o.get("source", "")).startswith("procedural:")]
    if real_objects:
        notes.append(f"{len(real_objects)} object meshes from your files: their own licences")
    diffusion = prov.get("diffusion_model") or {}
    if diffusion and not str(diffusion.get("kind", "")).startswith("tiny"):
        notes.append(f"images by {diffusion.get('model')}: that model's licence (SD 1.5: CreativeML OpenRAIL-M)")
    if notes:
        return {"license": "other", "license_name": "hoigen-derived", "license_link": "LICENSE"}, notes
    return {"license": "mit"}, notes


def card_text(record: dict[str, Any]) -> str:
    stage = str(record.get("stage", ""))
    fmt = (record.get("config") or {}).get("format") if stage == "export" else None
    prov = provenance(record)
    licence, notes = _licence(prov)
    header: dict[str, Any] = {
        **licence,
        "pretty_name": f"hoigen {stage}" + (f" ({fmt})" if fmt else ""),
        "task_categories": EXPORT_TASKS.get(str(fmt), ["other"]) if stage == "export" else TASKS.get(stage, ["other"]),
        "tags": ["hoigen", "synthetic", "hand-object-interaction", "3d", "pose-estimation"],
    }
    schema = stage_schema(stage)
    if schema is not None:
        header["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": "shard-*.tar"}]}]
        header["dataset_info"] = {"features": features_yaml(schema)}
    lines = ["---", *_yaml(header), "---", "", f"# hoigen {stage} output" + (f": {fmt} layout" if fmt else ""), ""]
    lines += [f"Made by `{record.get('command', 'hoigen')}` (seed {record.get('seed')}); "
              f"stages: {' -> '.join(prov['stages'])}. `run.json` beside this card has the full configuration.", ""]
    lines += ["## How the data was made", ""]
    hand = prov.get("hand_model") or {}
    if hand:
        kind = "hoigen's embedded stand-in hand (not MANO)" if hand.get("embedded") else "MANO, from the user's files"
        lines.append(f"- Hand model: `{hand.get('name')}` ({kind}).")
    objects = prov.get("objects") or []
    if objects:
        cats = sorted({o.get("category", "?") for o in objects})
        procedural = all(str(o.get("source", "")).startswith("procedural:") for o in objects)
        source = "procedural stand-ins built by hoigen" if procedural else "meshes from the user's files"
        lines.append(f"- Objects: {len(objects)} ({', '.join(cats)}), {source}.")
    diffusion = prov.get("diffusion_model") or {}
    if diffusion:
        note = f": {diffusion['note']}" if diffusion.get("note") else ""
        lines.append(f"- Diffusion model: `{diffusion.get('model')}`, kind `{diffusion.get('kind')}`{note}.")
    if not (hand or objects or diffusion):
        lines.append("- (no hand, object or diffusion record found in run.json or its inputs)")
    own = "every input is one of hoigen's own stand-ins (MIT)."
    lines += ["- Licence: " + ("; ".join(notes) if notes else own), ""]
    if schema is not None:
        lines += [
            "## Loading",
            "",
            "```python",
            "from datasets import load_dataset",
            'ds = load_dataset("path/to/this/folder", split="train")  # the fixed features above',
            "from hoigen.data.decode import maps",
            'm = maps(ds[0])  # {"depth_mm": uint16 millimetres, "seg": labels 0 bg, 1 hand, 2 object}',
            "```",
            "",
            "With webdataset: `wds.WebDataset(urls, shardshuffle=False).decode(hoigen.data.decode.wds_handler)` "
            "(its own decoders turn the uint16 depth into 8 bits). `index.parquet` has one row per sample, "
            "with the grasp metrics as `grasp_<name>`.",
            "",
        ]
    else:
        lines += ["## Layout", "", f"See hoigen's docs/reference/exports.md ({fmt or stage}).", ""]
    return "\n".join(lines)


def write_card(folder: Path, record: dict[str, Any]) -> None:
    """Write ``README.md`` (the dataset card) for a folder whose ``run.json`` is ``record``."""
    atomic_write_bytes(Path(folder) / CARD_FILE, card_text(record).encode())
