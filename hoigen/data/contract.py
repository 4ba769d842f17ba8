"""The shard contract in one place: member names, label values, map encodings, the objects pointer
and the ``ann.json`` field schema (DESIGN.md, "The shard contract").

Every stage that writes or reads shards (grasp, render, synthesize, ingest, export) and
``hoigen validate`` take these names from here; sample keys and seeds live in
:mod:`hoigen.data.schema`.

Map encodings (pixel centres at integer coordinates, camera in the OpenCV convention):

- ``seg.png`` uint8, one id per instance (visible surface only): :data:`SEG_BACKGROUND` 0,
  :data:`SEG_HAND` 1, :data:`SEG_OBJECT` 2 (the grasped object), :data:`SEG_TABLE` 3 (the support
  plane), :data:`SEG_FIRST_DISTRACTOR` + k for the k-th other object on the table (k <
  :data:`MAX_DISTRACTORS`). Shards from before tables and distractors hold only 0, 1 and 2 and read
  the same way (one object, no table).
- ``amodal.png`` bits, one per instance: bit ``seg_id - 1`` (:func:`amodal_bit`) is set where that
  instance covers the pixel when drawn alone: :data:`AMODAL_HAND_BIT` (1) the hand,
  :data:`AMODAL_OBJECT_BIT` (2) the grasped object, 4 the table, 8 << k distractor k. uint8 while
  every id is below 9, else uint16 (:func:`amodal_dtype`); :func:`amodal_masks` decodes either.
- ``depth.png`` uint16 millimetres = round(z * 1000) clipped to 0..65535, z the camera-frame depth
  in metres; 0 = no surface (:func:`encode_depth`, :func:`decode_depth`).
- ``nocs.png`` uint8 RGB = round((nocs_xyz + 0.5) * 255), 0 outside the visible object
  (:func:`encode_nocs`, :func:`decode_nocs`).
- ``normal.png`` uint8 RGB, the ControlNet v1.1 "normalbae" convention: with n the unit normal in
  the camera frame turned toward the camera, RGB = round(127.5 - 127.5 n) (R left, G up, B toward
  the viewer; a surface facing the camera squarely is (128, 128, 255)); background
  :data:`NORMAL_BACKGROUND` (0, 0, 0), a "zero condition" no surface has (B >= 128 on any surface).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------- folder members
RUN_FILE = "run.json"  # how the folder was made (stage, command, config, seed, versions)
INDEX_FILE = "index.parquet"  # one row per sample
OBJECTS_FILE = "objects.parquet"  # beside objects/<id>.ply: the meshes a grasp folder used

# ---------------------------------------------------------------------- member names
ANN = "ann.json"
NORMAL = "normal.png"
SEG = "seg.png"
SKELETON = "skeleton.png"
DEPTH = "depth.png"
NOCS = "nocs.png"
SHADE = "shade.png"
AMODAL = "amodal.png"
IMAGE = "image.jpg"
PROMPT = "prompt.txt"
GEN = "gen.json"

#: Members each stage adds to a sample (tar member suffixes).
GRASP_FIELDS = (ANN,)
RENDER_FIELDS = (NORMAL, SEG, SKELETON, DEPTH, NOCS, SHADE, AMODAL)
SYNTH_FIELDS = (IMAGE, PROMPT, GEN)
#: Members of a ``hoigen ingest`` sample (a real capture: the photo, its depth and the conditions).
INGEST_FIELDS = (ANN, IMAGE, DEPTH, SEG, NORMAL, SKELETON)
INGEST = "ingest"
#: Every member a finished sample of a stage holds.
STAGE_FIELDS = {
    "grasp": GRASP_FIELDS,
    "render": GRASP_FIELDS + RENDER_FIELDS,
    "synthesize": GRASP_FIELDS + RENDER_FIELDS + SYNTH_FIELDS,
    INGEST: INGEST_FIELDS,  # real data: no shade, nocs or amodal maps
}
#: PNG member -> (dtype, channels: 0 = 2-D).
PNG_MODES = {
    SEG: ("uint8", 0),
    AMODAL: ("uint8", 0),  # uint16 with more than five distractors (amodal_dtype)
    DEPTH: ("uint16", 0),
    NORMAL: ("uint8", 3),
    NOCS: ("uint8", 3),
    SKELETON: ("uint8", 3),
    SHADE: ("uint8", 3),
}

# ---------------------------------------------------------------------- label values
SEG_BACKGROUND, SEG_HAND, SEG_OBJECT = 0, 1, 2
SEG_TABLE = 3  # the support plane the grasped object and the distractors stand on
SEG_FIRST_DISTRACTOR = 4  # distractor k (0-based) has seg id SEG_FIRST_DISTRACTOR + k
MAX_DISTRACTORS = 13  # amodal.png holds one bit per instance in 16 bits: hand, object, table + 13
AMODAL_HAND_BIT, AMODAL_OBJECT_BIT = 1, 2


def distractor_seg_id(k: int) -> int:
    """``seg.png`` id of the k-th (0-based) distractor."""
    if not 0 <= k < MAX_DISTRACTORS:
        raise ValueError(f"distractor index {k} outside 0..{MAX_DISTRACTORS - 1}")
    return SEG_FIRST_DISTRACTOR + k


def amodal_bit(seg_id: int) -> int:
    """The ``amodal.png`` bit of the instance with ``seg.png`` id ``seg_id`` (>= 1)."""
    if not 1 <= seg_id < SEG_FIRST_DISTRACTOR + MAX_DISTRACTORS:
        raise ValueError(f"seg id {seg_id} has no amodal bit")
    return 1 << (seg_id - 1)


def amodal_dtype(seg_ids: Any) -> type:
    """uint8 when every id's bit fits in 8 bits (at most five distractors), else uint16."""
    return np.uint8 if max(list(seg_ids) or [1]) <= 8 else np.uint16


# ---------------------------------------------------------------------- map encodings
DEPTH_PER_METRE = 1000.0  # depth.png units: millimetres
NORMAL_BACKGROUND = (0, 0, 0)


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> ``depth.png`` uint16 millimetres (rounded, clipped to 0..65535; 0 = no surface)."""
    return np.clip(np.round(np.asarray(depth_m) * DEPTH_PER_METRE), 0, 65535).astype(np.uint16)


def decode_depth(depth: np.ndarray) -> np.ndarray:
    """``depth.png`` millimetres -> float64 metres (0 stays 0: no surface)."""
    return np.asarray(depth).astype(np.float64) / DEPTH_PER_METRE


def encode_nocs(nocs_xyz: np.ndarray) -> np.ndarray:
    """NOCS coordinates (..., 3) in [-0.5, 0.5] -> ``nocs.png`` uint8 RGB = round((xyz + 0.5) * 255)."""
    return np.clip(np.round((np.asarray(nocs_xyz) + 0.5) * 255.0), 0, 255).astype(np.uint8)


def decode_nocs(nocs: np.ndarray) -> np.ndarray:
    """``nocs.png`` RGB -> float64 NOCS coordinates (the pixel centre of each 1/255 step)."""
    return np.asarray(nocs).astype(np.float64) / 255.0 - 0.5


def normal_colour(normals: np.ndarray) -> np.ndarray:
    """Unit camera-frame (OpenCV) normals -> float RGB in the "normalbae" convention: 127.5 - 127.5 n.

    The one definition of the normal colouring, shared by the renderer and by conditions made from
    real depth (:mod:`hoigen.geometry.normals`); round and clip to store it as ``normal.png``."""
    return 127.5 - 127.5 * normals


def amodal_bits(
    hand_full: np.ndarray, object_full: np.ndarray, extras: dict[int, np.ndarray] | None = None
) -> np.ndarray:
    """``amodal.png`` from the full (amodal) masks of the hand, the grasped object and ``extras``
    (seg id -> mask: the table and distractors); dtype :func:`amodal_dtype`."""
    masks = {SEG_HAND: hand_full, SEG_OBJECT: object_full, **(extras or {})}
    dtype = amodal_dtype(masks)
    out = np.zeros(np.shape(hand_full), dtype=dtype)
    for seg_id, mask in masks.items():
        out |= np.asarray(mask).astype(dtype) * dtype(amodal_bit(seg_id))
    return out


def amodal_masks(amodal: np.ndarray) -> dict[int, np.ndarray]:
    """``amodal.png`` (uint8 or uint16) -> {seg id: full mask} for every instance whose bit is set
    somewhere, plus the hand and the grasped object always (possibly empty)."""
    amodal = np.asarray(amodal).astype(np.uint32)
    present = int(np.bitwise_or.reduce(amodal, axis=None)) if amodal.size else 0
    out = {SEG_HAND: (amodal & AMODAL_HAND_BIT) > 0, SEG_OBJECT: (amodal & AMODAL_OBJECT_BIT) > 0}
    for seg_id in range(SEG_TABLE, SEG_FIRST_DISTRACTOR + MAX_DISTRACTORS):
        bit = amodal_bit(seg_id)
        if present & bit:
            out[seg_id] = (amodal & bit) > 0
    return out


# ---------------------------------------------------------------------- the objects folder
#: ``run.json`` config key of a stage folder that points to the folder holding ``objects.parquet``.
OBJECTS_KEY = "objects_dir"


def read_run_json(folder: Path) -> dict[str, Any]:
    """A stage folder's ``run.json`` ({} when there is none)."""
    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def objects_dir_of(folder: Path) -> Path:
    """The folder holding ``objects.parquet`` for a stage output (followed back through run.json)."""
    from hoigen.errors import HoigenError

    folder = Path(folder)
    for _ in range(8):
        if (folder / OBJECTS_FILE).exists():
            return folder.resolve()
        pointer = read_run_json(folder).get(OBJECTS_KEY)
        if not pointer:
            break
        folder = Path(pointer)
    raise HoigenError(f"{folder}: no objects.parquet found; point --in at the output of hoigen grasp or render")


# ---------------------------------------------------------------------- ann.json
#: ann.json fields every stage writes: dotted path -> shape (() = a scalar, "str", "dict").
GRASP_ANN: dict[str, Any] = {
    "key": "str",
    "hand.side": "str",
    "hand.model": "str",
    "hand.global_orient": (3,),
    "hand.hand_pose": (45,),
    "hand.betas": (10,),
    "hand.transl": (3,),
    "hand.joints3d": (21, 3),
    "object.id": "str",
    "object.category": "str",
    "object.mesh_sha256": "str",
    "object.pose": (4, 4),
    "object.nocs_from_mesh": (4, 4),
    "trajectory.frame": (),
    "trajectory.frames": (),
    "grasp": "dict",
}
#: ann.json fields render (and every later stage) adds.
RENDER_ANN: dict[str, Any] = {
    "camera.K": (3, 3),
    "camera.world_to_cam": (4, 4),
    "camera.width": (),
    "camera.height": (),
    "hand.joints2d": (21, 2),
    "hand.joints_visible": (21,),
}
#: Fields of ``gen.json``.
GEN_FIELDS = ("model", "seed", "steps", "guidance")


#: ann.json fields of ``hoigen ingest`` samples (real data: a mesh may be unknown, no grasp metrics, and
#: the full ``hand_pose`` only with MANO's PCA basis at hand: ``pose_pca`` always).
INGEST_ANN: dict[str, Any] = {
    **{
        k: v
        for k, v in GRASP_ANN.items()
        if k not in ("grasp", "object.mesh_sha256", "object.nocs_from_mesh", "hand.hand_pose")
    },
    "hand.pose_pca": (45,),
    **RENDER_ANN,
}


def ann_fields(stage: str) -> dict[str, Any]:
    """The ann.json fields a sample of ``stage`` holds (render and synthesize add the camera and 2D joints;
    ingest: :data:`INGEST_ANN`)."""
    if stage == INGEST:
        return dict(INGEST_ANN)
    spec = dict(GRASP_ANN)
    if stage in ("render", "synthesize"):
        spec.update(RENDER_ANN)
    return spec


# ---------------------------------------------------------------------- ann.json value ranges
#: Bounds on ann.json numbers (every number must also be finite). MANO's shape coefficients ``betas``
#: are in standard deviations of its shape space (real hands lie within about +-3); axis-angle
#: rotations (``global_orient`` and each joint's 3 values in ``hand_pose``) turn by at most 2 pi;
#: positions are in metres within :data:`MAX_METRES` of the world origin; pixel coordinates within
#: :data:`MAX_PIXELS` of the image (2D joints may lie outside it); image sizes 1..:data:`MAX_IMAGE_SIDE`.
MAX_BETA = 5.0
MAX_PCA = 20.0  # MANO's pose PCA coefficients (DexYCB's lie within about +-5)
MAX_ANGLE = 2 * np.pi
MAX_METRES = 100.0
MAX_PIXELS = 1e5
MAX_IMAGE_SIDE = 16384
RIGID_TOL = 1e-3  # |R^T R - I| and |det R - 1| of a rigid pose
#: dotted field -> (low, high) for every element.
ANN_RANGES: dict[str, tuple[float, float]] = {
    "hand.betas": (-MAX_BETA, MAX_BETA),
    "hand.global_orient": (-MAX_ANGLE, MAX_ANGLE),
    "hand.hand_pose": (-MAX_ANGLE, MAX_ANGLE),
    "hand.pose_pca": (-MAX_PCA, MAX_PCA),
    "hand.transl": (-MAX_METRES, MAX_METRES),
    "hand.joints3d": (-MAX_METRES, MAX_METRES),
    "hand.joints2d": (-MAX_PIXELS, MAX_PIXELS),
    "hand.joints_visible": (0, 1),
    "camera.width": (1, MAX_IMAGE_SIDE),
    "camera.height": (1, MAX_IMAGE_SIDE),
    "trajectory.frames": (1, 1e6),
}
#: 4x4 poses that must be rigid (rotation and translation, last row 0 0 0 1) or a similarity (scale > 0).
RIGID_POSES = ("object.pose", "camera.world_to_cam")
SIMILARITY_POSES = ("object.nocs_from_mesh",)
INTEGER_FIELDS = ("camera.width", "camera.height", "trajectory.frame", "trajectory.frames")


def _get(ann: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    value: Any = ann
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _pose_problem(m: np.ndarray, rigid: bool) -> str | None:
    if np.abs(m[3] - (0, 0, 0, 1)).max() > RIGID_TOL:
        return "last row is not 0 0 0 1"
    if np.abs(m[:3, 3]).max() > MAX_METRES:
        return f"translation beyond {MAX_METRES:g} m"
    r = m[:3, :3]
    det = float(np.linalg.det(r))
    if det <= 0:
        return "is a reflection or degenerate (det <= 0)"
    scale = det ** (1 / 3) if not rigid else 1.0
    if np.abs(r.T @ r - scale**2 * np.eye(3)).max() > RIGID_TOL * max(scale**2, 1e-12) or (
        rigid and abs(det - 1) > RIGID_TOL
    ):
        return "is not a rotation" + ("" if rigid else " times a scale")
    return None


# ---------------------------------------------------------------------- scene instances (render's ann.json)
INSTANCE_ROLES = ("grasped", "distractor")
#: Fields of each entry of ann.json ``instances`` (render and later; the grasped object first): shape as above.
INSTANCE_FIELDS: dict[str, Any] = {
    "seg_id": (),
    "role": "str",
    "id": "str",
    "category": "str",
    "mesh_sha256": "str",
    "pose": (4, 4),
    "nocs_from_mesh": (4, 4),
    "bbox": (4,),
    "bbox_visible": (4,),
    "px_visible": (),
    "px_full": (),
}


def sample_instances(ann: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object instance of a sample, the grasped object first: ann.json ``instances``, or for a sample
    without it (shards from before scenes, ingest) one instance built from ``object`` (seg id 2; boxes and
    pixel counts only where the sample has them)."""
    if isinstance(ann.get("instances"), list):
        return list(ann["instances"])
    obj = ann.get("object") or {}
    inst = {"seg_id": SEG_OBJECT, "role": "grasped"}
    inst.update({k: obj[k] for k in ("id", "category", "mesh_sha256", "pose", "nocs_from_mesh") if k in obj})
    inst.update({k: obj[k] for k in ("bbox", "bbox_visible") if k in obj})
    return [inst]


def _instance_problems(ann: dict[str, Any]) -> Iterator[str]:
    """Problems of render's ann.json ``instances`` and ``table`` (both optional: older shards lack them)."""
    if "table" in ann and ann["table"] is not None:
        table = ann["table"]
        if not isinstance(table, dict):
            yield "ann.json table is neither an object nor null"
        else:
            if table.get("seg_id") != SEG_TABLE:
                yield f"ann.json table.seg_id is {table.get('seg_id')!r}, expected {SEG_TABLE}"
            try:
                height = float(table.get("height"))
                size = np.asarray(table.get("size"), dtype=np.float64)
            except (TypeError, ValueError):
                yield "ann.json table.height or table.size is not numeric"
            else:
                if not abs(height) <= MAX_METRES:
                    yield f"ann.json table.height {height:g} is not a height within {MAX_METRES:g} m"
                if size.shape != (2,) or not np.isfinite(size).all() or (size <= 0).any() or (size > MAX_METRES).any():
                    yield "ann.json table.size is not two positive lengths in metres"
    if "instances" not in ann:
        return
    instances = ann["instances"]
    if not isinstance(instances, list) or not instances:
        yield "ann.json instances is not a non-empty list"
        return
    seen: set[Any] = set()
    width, height = (ann.get("camera") or {}).get("width"), (ann.get("camera") or {}).get("height")
    for i, inst in enumerate(instances):
        where = f"ann.json instances[{i}]"
        if not isinstance(inst, dict):
            yield f"{where} is not an object"
            continue
        arrays: dict[str, np.ndarray] = {}
        for name, shape in INSTANCE_FIELDS.items():
            if name not in inst:
                yield f"{where} has no field {name}"
            elif shape == "str":
                if not isinstance(inst[name], str):
                    yield f"{where}.{name} is not a string"
            else:
                try:
                    arr = np.asarray(inst[name], dtype=np.float64)
                except (TypeError, ValueError, OverflowError):
                    yield f"{where}.{name} is not numeric"
                    continue
                if arr.shape != shape:
                    yield f"{where}.{name} has shape {list(arr.shape)}, expected {list(shape)}"
                elif not np.isfinite(arr).all():
                    yield f"{where}.{name} holds NaN or infinity"
                else:
                    arrays[name] = arr
        seg_id, role = inst.get("seg_id"), inst.get("role")
        want_role = "grasped" if i == 0 else "distractor"
        if role != want_role:
            yield f"{where}.role is {role!r}, expected {want_role!r} (the grasped object comes first)"
        if i == 0 and seg_id != SEG_OBJECT:
            yield f"{where}.seg_id is {seg_id!r}; the grasped object has seg id {SEG_OBJECT}"
        last = SEG_FIRST_DISTRACTOR + MAX_DISTRACTORS - 1
        if i > 0 and seg_id not in range(SEG_FIRST_DISTRACTOR, last + 1):
            yield f"{where}.seg_id is {seg_id!r}; distractors have seg ids {SEG_FIRST_DISTRACTOR}..{last}"
        if seg_id in seen:
            yield f"{where}.seg_id {seg_id!r} is used twice"
        seen.add(seg_id)
        for name, rigid in (("pose", True), ("nocs_from_mesh", False)):
            if name in arrays and (problem := _pose_problem(arrays[name], rigid)):
                yield f"{where}.{name} {problem}"
        for name in ("bbox", "bbox_visible"):
            box = arrays.get(name)
            if box is None:
                continue
            if (box != np.round(box)).any() or (box < 0).any() or box[2] < box[0] or box[3] < box[1]:
                yield f"{where}.{name} is not a pixel box [x0, y0, x1, y1] with x0 <= x1, y0 <= y1"
            elif isinstance(width, int) and isinstance(height, int) and (box[2] > width or box[3] > height):
                yield f"{where}.{name} reaches past the {width}x{height} image"
        counts = [arrays.get(n) for n in ("px_visible", "px_full")]
        if all(c is not None for c in counts):
            visible, full = (float(c) for c in counts)  # type: ignore[arg-type]
            if visible != round(visible) or full != round(full) or not 0 <= visible <= full:
                yield f"{where} px_visible {visible:g} and px_full {full:g} are not counts with visible <= full"
    obj_id = (ann.get("object") or {}).get("id")
    if isinstance(instances[0], dict) and obj_id is not None and instances[0].get("id") != obj_id:
        yield f"ann.json instances[0].id {instances[0].get('id')!r} is not object.id {obj_id!r}"


def ann_problems(ann: Any, key: str, stage: str) -> Iterator[str]:
    """Every problem of one ``ann.json`` of ``stage``: missing fields, wrong shapes or types, non-finite
    numbers, values out of :data:`ANN_RANGES`, poses that are not rigid, a frame outside the trajectory,
    a camera matrix that is not one; the one schema stages (reading input) and ``hoigen validate`` check."""
    if not isinstance(ann, dict):
        yield "ann.json is not a JSON object"
        return
    arrays: dict[str, np.ndarray] = {}
    for dotted, shape in ann_fields(stage).items():
        found, value = _get(ann, dotted)
        if not found:
            yield f"ann.json has no field {dotted}"
        elif shape == "str":
            if not isinstance(value, str):
                yield f"ann.json {dotted} is not a string"
        elif shape == "dict":
            if not isinstance(value, dict):
                yield f"ann.json {dotted} is not an object"
        else:
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                yield f"ann.json {dotted} is not numeric"
                continue
            if arr.shape != shape:
                yield f"ann.json {dotted} has shape {list(arr.shape)}, expected {list(shape)}"
            elif not np.isfinite(arr).all():
                yield f"ann.json {dotted} holds NaN or infinity"
            else:
                arrays[dotted] = arr
    for dotted, (low, high) in ANN_RANGES.items():
        arr = arrays.get(dotted)
        if arr is not None and ((arr < low).any() or (arr > high).any()):
            worst = arr.flat[int(np.argmax(np.maximum(low - arr, arr - high)))]
            yield f"ann.json {dotted} holds {worst:g}, outside {low:g}..{high:g}"
    for dotted in INTEGER_FIELDS:
        if dotted in arrays and (arrays[dotted] != np.round(arrays[dotted])).any():
            yield f"ann.json {dotted} is not a whole number"
    for dotted in ("hand.global_orient", "hand.hand_pose"):
        if (
            dotted in arrays
            and (np.abs(arrays[dotted]) <= MAX_ANGLE).all()
            and (np.linalg.norm(arrays[dotted].reshape(-1, 3), axis=1) > MAX_ANGLE).any()
        ):
            yield f"ann.json {dotted} turns a joint by more than 2 pi"
    for dotted in (*RIGID_POSES, *SIMILARITY_POSES):
        if dotted in arrays and (problem := _pose_problem(arrays[dotted], dotted in RIGID_POSES)):
            yield f"ann.json {dotted} {problem}"
    if "trajectory.frame" in arrays and "trajectory.frames" in arrays:
        frame, frames = arrays["trajectory.frame"], arrays["trajectory.frames"]
        if not 0 <= frame < frames:
            yield f"ann.json trajectory.frame {frame:g} is outside 0..{frames - 1:g}"
    k = arrays.get("camera.K")
    if k is not None and (k[0, 0] <= 0 or k[1, 1] <= 0 or np.abs(k[2] - (0, 0, 1)).max() > 1e-9 or k[1, 0] != 0):
        yield "ann.json camera.K is not a camera matrix (fx, fy > 0, last row 0 0 1)"
    if ann.get("key") not in (None, key):
        yield f"ann.json key {ann.get('key')!r} differs from the sample key"
    found, obj_id = _get(ann, "object.id")
    if found and isinstance(obj_id, str) and not key.startswith(obj_id + "_"):
        yield f"ann.json object.id {obj_id!r} does not match the key"
    if "support" in ann and ann["support"] is not None:
        support = ann["support"]
        height = support.get("height") if isinstance(support, dict) else None
        if not isinstance(height, (int, float)) or isinstance(height, bool) or not abs(height) <= MAX_METRES:
            yield f"ann.json support is not null or {{\"height\": <world y within {MAX_METRES:g} m>}}"
    if stage in ("render", "synthesize"):
        yield from _instance_problems(ann)
