"""The shard contract in one place: member names, label values, map encodings, the objects pointer
and the ``ann.json`` field schema (DESIGN.md, "The shard contract").

Every stage that writes or reads shards (grasp, render, synthesize, ingest, export) and
``hoigen validate`` take these names from here; sample keys and seeds live in
:mod:`hoigen.data.schema`.

Map encodings (pixel centres at integer coordinates, camera in the OpenCV convention):

- ``seg.png`` uint8: :data:`SEG_BACKGROUND` 0, :data:`SEG_HAND` 1, :data:`SEG_OBJECT` 2 (visible
  surface only).
- ``amodal.png`` uint8 bits: :data:`AMODAL_HAND_BIT` (1) where the hand covers the pixel when drawn
  alone, :data:`AMODAL_OBJECT_BIT` (2) likewise for the object.
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
    INGEST: INGEST_FIELDS,
}
#: PNG member -> (dtype, channels: 0 = 2-D).
PNG_MODES = {
    SEG: ("uint8", 0),
    AMODAL: ("uint8", 0),
    DEPTH: ("uint16", 0),
    NORMAL: ("uint8", 3),
    NOCS: ("uint8", 3),
    SKELETON: ("uint8", 3),
    SHADE: ("uint8", 3),
}

# ---------------------------------------------------------------------- label values
SEG_BACKGROUND, SEG_HAND, SEG_OBJECT = 0, 1, 2
AMODAL_HAND_BIT, AMODAL_OBJECT_BIT = 1, 2

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


def amodal_bits(hand_full: np.ndarray, object_full: np.ndarray) -> np.ndarray:
    """``amodal.png`` uint8 from the two full (amodal) masks."""
    return (
        np.asarray(hand_full).astype(np.uint8) * AMODAL_HAND_BIT
        | np.asarray(object_full).astype(np.uint8) * AMODAL_OBJECT_BIT
    ).astype(np.uint8)


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
#: ann.json fields ingest may leave null: ``hand.hand_pose`` without MANO files (``hand.pose_pca`` [45]
#: then holds DexYCB's PCA coefficients), the object's mesh fields when the release has no model mesh.
INGEST_NULLABLE = ("hand.hand_pose", "object.mesh_sha256", "object.nocs_from_mesh")
#: Fields of ``gen.json``.
GEN_FIELDS = ("model", "seed", "steps", "guidance")


def ann_fields(stage: str) -> dict[str, Any]:
    """The ann.json fields a sample of ``stage`` holds (render and synthesize add the camera and 2D joints;
    ingest has those but no grasp metrics)."""
    spec = dict(GRASP_ANN)
    if stage in ("render", "synthesize", INGEST):
        spec.update(RENDER_ANN)
    if stage == INGEST:
        del spec["grasp"]
    return spec
