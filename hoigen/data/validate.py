"""``hoigen validate DIR``: check a stage's output folder against the shard contract (DESIGN.md).

Checks, and reports every problem as one line (``<file>: <key>: <what>``):

- the folder has ``run.json`` naming its stage, and every shard ``0..shards-1`` it promises;
- no temporary files (``*.tmp-<pid>``) are left, and no shard is truncated or corrupt;
- every sample has every member its stage writes (grasp: ``ann.json``; render: + the seven maps;
  synthesize: + ``image.jpg``, ``prompt.txt``, ``gen.json``; ingest: ``ann.json``, ``image.jpg``,
  ``depth.png``, ``seg.png``, ``normal.png``, ``skeleton.png``, its ann.json
  :data:`~hoigen.data.contract.INGEST_ANN`), keys are well formed and unique, and
  ``ann.json.key`` equals the sample key;
- ``ann.json`` has the contract's fields with their shapes (MANO parameters, 21 joints, 4x4 poses,
  3x3 K, ...), all numbers finite;
- every PNG decodes with the mode and size the contract gives (seg uint8 2-D, amodal uint8 2-D or
  uint16 past five distractors, depth uint16 2-D, the colour maps uint8 RGB, all
  ``camera.height x camera.width``); ``image.jpg`` is RGB;
- in a scene sample (ann.json ``instances``): ``seg.png`` and ``amodal.png`` hold only the ids of the
  hand, the table (when ``table`` is set) and the listed instances;
- ``index.parquet`` holds exactly one row per sample, with the right shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hoigen.data.atomic import is_tmp
from hoigen.data.codec import decode_field
from hoigen.data.contract import (
    AMODAL,
    GEN_FIELDS,
    INDEX_FILE,
    MAX_DISTRACTORS,
    OBJECTS_FILE,
    OBJECTS_KEY,
    PNG_MODES,
    RUN_FILE,
    SEG,
    SEG_BACKGROUND,
    SEG_FIRST_DISTRACTOR,
    SEG_HAND,
    SEG_OBJECT,
    SEG_TABLE,
    STAGE_FIELDS,
    amodal_bit,
    amodal_dtype,
    ann_problems,
    read_run_json,
)
from hoigen.data.identity import START_FILE
from hoigen.data.index import PARTS_DIR, shard_problem
from hoigen.data.lock import LOCK_GLOB, held_by_live_process
from hoigen.data.schema import OBJECT_ID_RE, Sample
from hoigen.data.shards import list_shards, read_shard, shard_index, shard_name
from hoigen.errors import HoigenError

MAX_LISTED = 50


@dataclass
class Report:
    folder: Path
    stage: str = "?"
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    detail: str | None = None  # the ok line's description (export folders)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok and self.detail:
            return f"ok: {self.folder}: {self.detail}"
        if self.ok:
            return (
                f"ok: {self.folder}: {self.stage} folder, {self.shards} shards, {self.samples} samples, index matches"
            )
        return f"{self.folder}: {len(self.problems)} problems in {self.shards} shards ({self.samples} samples read)"


def check_ann(ann: Any, key: str, stage: str) -> Iterator[str]:
    """Problems of one ``ann.json`` (the schema and its value ranges: :func:`hoigen.data.contract.ann_problems`)."""
    return ann_problems(ann, key, stage)


def _check_key(key: str, stage: str) -> Iterator[str]:
    parts = key.split("_")
    want = 3 if stage == "grasp" else 4
    if len(parts) != want or not OBJECT_ID_RE.match(parts[0]) or not all(p.isdigit() for p in parts[1:]):
        yield f"key is not object_grasp_frame{'' if stage == 'grasp' else '_view'}"


def scene_ids(ann: Any) -> set[int] | None:
    """The seg ids a scene sample may hold besides background (hand, object, the table when set, every listed
    instance); None for a sample without ``instances`` (older shards, ingest) or a malformed one."""
    if not isinstance(ann, dict) or not isinstance(ann.get("instances"), list):
        return None
    ids = {SEG_HAND, SEG_OBJECT}
    if ann.get("table") is not None:
        ids.add(SEG_TABLE)
    for inst in ann["instances"]:
        seg_id = inst.get("seg_id") if isinstance(inst, dict) else None
        if not isinstance(seg_id, int) or isinstance(seg_id, bool):
            return None
        ids.add(seg_id)
    return ids


def _scene_map_problems(decoded: dict[str, Any], ids: set[int]) -> Iterator[str]:
    """``seg.png``/``amodal.png`` ids that neither the hand, the table nor an instance of ann.json names."""
    seg = decoded.get(SEG)
    if isinstance(seg, np.ndarray) and seg.size:
        stray = sorted(set(np.unique(seg).tolist()) - ids - {SEG_BACKGROUND})
        if stray:
            yield f"seg.png holds ids {stray} that no instance, hand or table of ann.json names"
    amodal = decoded.get(AMODAL)
    if isinstance(amodal, np.ndarray) and amodal.size:
        allowed = sum(amodal_bit(i) for i in ids if 1 <= i < SEG_FIRST_DISTRACTOR + MAX_DISTRACTORS)
        if int(np.bitwise_or.reduce(amodal.astype(np.uint32), axis=None)) & ~allowed:
            yield "amodal.png sets bits of instances ann.json does not list"


def check_sample(raw: Sample, stage: str, objects: dict[str, str] | None = None) -> Iterator[str]:
    """Problems of one undecoded sample of ``stage`` (``objects``: id -> mesh sha256 of the folder's objects)."""
    key = raw["__key__"]
    yield from _check_key(key, stage)
    members = {k for k in raw if not k.startswith("__")}
    for missing in sorted(set(STAGE_FIELDS[stage]) - members):
        yield f"member {missing} is missing"
    decoded: dict[str, Any] = {}
    for name in sorted(members):
        try:
            decoded[name] = decode_field(name, raw[name], "shard")
        except HoigenError as exc:
            yield str(exc).split(": ", 1)[-1].split(";")[0]
    ann = decoded.get("ann.json")
    if ann is not None:
        yield from check_ann(ann, key, stage)
    if objects is not None and isinstance(ann, dict) and isinstance(ann.get("object"), dict):
        obj = ann["object"]
        if obj.get("id") not in objects:
            if stage != "ingest":
                yield f"object {obj.get('id')!r} is not in objects.parquet"
        elif obj.get("mesh_sha256") not in (None, objects[obj["id"]]):
            yield f"ann.json object.mesh_sha256 differs from objects.parquet's for {obj['id']!r}"
        listed = ann["instances"] if scene_ids(ann) is not None else []  # well-formed entries only
        for i, inst in enumerate(listed):
            if i and inst.get("id") not in objects:  # instances[0] is the object checked above
                yield f"ann.json instances[{i}].id {inst.get('id')!r} is not in objects.parquet"
            elif i and inst.get("mesh_sha256") != objects[inst["id"]]:
                yield f"ann.json instances[{i}].mesh_sha256 differs from objects.parquet's for {inst['id']!r}"
    cam = ann.get("camera", {}) if isinstance(ann, dict) else {}
    size = (cam.get("height"), cam.get("width"))
    modes = dict(PNG_MODES)
    ids = scene_ids(ann)
    if ids is not None:
        modes[AMODAL] = (np.dtype(amodal_dtype(ids)).name, 0)
        yield from _scene_map_problems(decoded, ids)
    for name, (dtype, channels) in modes.items():
        img = decoded.get(name)
        if img is None or not isinstance(img, np.ndarray):
            continue
        mode = f"{img.dtype} {'x'.join(map(str, img.shape[2:])) or '2-D'}"
        if str(img.dtype) != dtype or (img.ndim != 2 if channels == 0 else img.shape[2:] != (channels,)):
            yield f"{name} is {mode}, expected {dtype} {'2-D' if channels == 0 else f'{channels} channels'}"
        if None not in size and img.shape[:2] != size:
            yield f"{name} is {img.shape[1]}x{img.shape[0]}, camera says {size[1]}x{size[0]}"
    image = decoded.get("image.jpg")
    if isinstance(image, np.ndarray) and (image.ndim != 3 or image.shape[2] != 3):
        yield f"image.jpg has shape {list(image.shape)}, expected RGB"
    gen = decoded.get("gen.json")
    if "gen.json" in decoded and not (isinstance(gen, dict) and all(f in gen for f in GEN_FIELDS)):
        yield f"gen.json lacks one of {', '.join(GEN_FIELDS)}"
    prompt = decoded.get("prompt.txt")
    if "prompt.txt" in decoded and not (isinstance(prompt, str) and prompt.strip()):
        yield "prompt.txt is empty"


def _objects_check(folder: Path, stage: str, run: dict[str, Any], problems: list[str]) -> dict[str, str] | None:
    """Check the folder's objects (``objects.parquet`` with every ``objects/<id>.ply`` and its sha256, or the
    folder ``run.json`` points to); returns id -> sha256 (None when they cannot be read)."""
    from hoigen.objects import read_objects

    if stage in ("grasp",) or (folder / OBJECTS_FILE).exists():
        where = folder
    elif run.get(OBJECTS_KEY):
        where = Path(run[OBJECTS_KEY])
    else:
        return None
    if not (where / OBJECTS_FILE).exists():
        problems.append(f"{where / OBJECTS_FILE}: missing; rerun the hoigen {stage} command that wrote {where}")
        return None
    try:
        return {oid: asset.sha256 for oid, asset in read_objects(where).items()}
    except HoigenError as exc:
        problems.append(str(exc))
        return None


def _index_rows(folder: Path) -> tuple[list[tuple[str, str]] | None, str | None]:
    import pyarrow.parquet as pq

    path = folder / INDEX_FILE
    if not path.exists():
        return None, f"{path}: missing; rerun the stage or run hoigen merge {folder}"
    try:
        table = pq.read_table(path, columns=["key", "shard"])
    except Exception as exc:  # noqa: BLE001 - any unreadable parquet is one problem line
        return None, f"{path}: unreadable ({' '.join(str(exc).split())})"
    return list(zip(table.column("key").to_pylist(), table.column("shard").to_pylist(), strict=True)), None


def validate(folder: Path) -> Report:
    """Check every shard of a stage folder; the report lists every problem found."""
    folder = Path(folder)
    report = Report(folder)
    if not folder.is_dir():
        raise HoigenError(f"{folder}: not a folder; point hoigen validate at a stage's output folder")
    problems = report.problems
    try:
        run = read_run_json(folder)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        problems.append(f"{folder / RUN_FILE}: unreadable ({' '.join(str(exc).split())}); rerun with --overwrite")
        run = {}
    if not isinstance(run, dict):
        problems.append(f"{folder / RUN_FILE}: not a JSON object; rerun with --overwrite")
        run = {}
    stage = run.get("stage")
    if stage == "export" or (stage is None and (folder / START_FILE).exists()):
        report.stage = "export"
        validate_export(folder, run, report)
        return report
    if stage not in STAGE_FIELDS:
        problems.append(f"{folder / 'run.json'}: missing or names no shard stage ({stage!r}); is this a stage folder?")
        stage = "grasp"
    report.stage = stage
    objects = _objects_check(folder, stage, run, problems)
    for p in sorted([*folder.iterdir(), *(folder / PARTS_DIR).glob("*")]):
        if is_tmp(p):
            problems.append(f"{p}: temporary file left by an interrupted write; rerun the same command to clean it")
    for p in sorted(folder.glob(LOCK_GLOB)):
        if held_by_live_process(p):
            problems.append(f"{p}: a run is still writing this folder")
    shards = list_shards(folder)
    report.shards = len(shards)
    expected = run.get("shards")
    if isinstance(expected, int):
        have = {shard_index(p) for p in shards}
        missing = [shard_name(i) for i in range(expected) if i not in have]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            problems.append(f"{folder}: {len(missing)} of {expected} shards missing ({', '.join(missing[:5])}{more})")
    seen: dict[str, str] = {}
    for path in shards:
        damage = shard_problem(path)
        if damage is not None:
            problems.append(f"{path}: does not match its index part ({damage}); rerun the same command to remake it")
        try:
            for raw in read_shard(path, decode=False):
                report.samples += 1
                key = raw["__key__"]
                if key in seen:
                    problems.append(f"{path}: {key}: duplicate key (also in {seen[key]})")
                seen[key] = path.name
                problems.extend(f"{path}: {key}: {p}" for p in check_sample(raw, stage, objects))
        except HoigenError as exc:
            problems.append(str(exc))
    rows, err = _index_rows(folder)
    if err:
        problems.append(err)
    elif rows is not None:
        indexed = dict(rows)
        if len(indexed) != len(rows):
            problems.append(f"{folder / INDEX_FILE}: duplicate keys")
        for key in sorted(set(seen) - set(indexed)):
            problems.append(f"{folder / INDEX_FILE}: no row for {key} ({seen[key]})")
        for key in sorted(set(indexed) - set(seen)):
            problems.append(f"{folder / INDEX_FILE}: row {key} ({indexed[key]}) is in no shard")
        for key in sorted(set(indexed) & set(seen)):
            if indexed[key] != seen[key]:
                problems.append(f"{folder / INDEX_FILE}: row {key} says {indexed[key]}, the sample is in {seen[key]}")
    return report


NOCS_SUFFIXES = ("_color.png", "_coord.png", "_depth.png", "_mask.png", "_meta.txt", "_hand.json", "_camera.json")


def _export_expected(folder: Path, fmt: str, problems: list[str]) -> list[Path]:
    """The files an export's own lists name (nocs: <split>_list.txt; bop: scene_gt.json; coco: annotations/)."""
    import json

    wanted: list[Path] = []
    if fmt == "nocs":
        for lst in sorted(folder.glob("*_list.txt")):
            for line in lst.read_text(errors="replace").split():
                wanted += [folder / (line + suffix) for suffix in NOCS_SUFFIXES]
    for gt in sorted(folder.glob("*/*/scene_gt.json")) if fmt == "bop" else []:
        try:
            ims = json.loads(gt.read_text())
        except ValueError:
            continue  # reported as unreadable JSON below
        for im in ims if isinstance(ims, dict) else []:
            name = f"{int(im):06d}"
            wanted += [gt.parent / "rgb" / f"{name}.png", gt.parent / "depth" / f"{name}.png"]
            wanted += [gt.parent / sub / f"{name}_000000.png" for sub in ("mask", "mask_visib")]
    for ann in sorted((folder / "annotations").glob("*.json")) if fmt == "coco" else []:
        try:
            data = json.loads(ann.read_text())
            wanted += [folder / "images" / ann.stem / img["file_name"] for img in data["images"]]
        except (ValueError, KeyError, TypeError):
            problems.append(f"{ann}: not a COCO annotation file; rerun the export command that wrote {folder}")
    if not wanted:
        problems.append(f"{folder}: the {fmt} export lists no images; rerun the export command that wrote it")
    return wanted


def validate_export(folder: Path, run: dict[str, Any], report: Report) -> None:
    """An export folder: complete (run.json, written last), every listed file present, every image and JSON
    file decodes, no temporary file left. Advice: rerun the export command (an export is never merged)."""
    import json

    problems = report.problems
    if not run:
        problems.append(
            f"{folder / RUN_FILE}: missing: the export was interrupted; rerun the export command that wrote {folder}"
        )
    start = folder / START_FILE
    if run and start.exists():
        try:
            started = json.loads(start.read_text()).get("fingerprint")
        except (ValueError, AttributeError):
            started = None
        if started != run.get("fingerprint"):
            problems.append(f"{start}: another export run started here after {RUN_FILE} was written; rerun the export")
    fmt = str((run.get("config") or {}).get("format", "?"))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".lock-"))
    for p in files:
        if is_tmp(p):
            problems.append(f"{p}: temporary file left by an interrupted write; rerun the export command")
            continue
        ext = p.suffix.lower()
        if ext not in (".png", ".jpg", ".jpeg", ".json"):
            continue
        try:
            decode_field(p.name, p.read_bytes(), str(p.parent))
        except HoigenError as exc:
            problems.append(str(exc).split(";")[0] + f"; rerun the export command that wrote {folder}")
        if ext != ".json":
            report.samples += 1
    present = set(files)
    missing = [p for p in (_export_expected(folder, fmt, problems) if run else []) if p not in present]
    for p in missing[:MAX_LISTED]:
        problems.append(f"{p}: missing (its export list names it); rerun the export command that wrote {folder}")
    report.shards = len(files)
    report.detail = f"export folder ({fmt}), {len(files)} files, {report.samples} images decoded"


def format_report(report: Report) -> list[str]:
    """The lines ``hoigen validate`` prints: problems (at most 50, then a count), then the summary."""
    lines = report.problems[:MAX_LISTED]
    if len(report.problems) > MAX_LISTED:
        lines.append(f"... and {len(report.problems) - MAX_LISTED} more")
    return [*lines, report.summary()]


__all__ = ["Report", "check_ann", "check_sample", "format_report", "validate"]
