"""DexYCB (Chao et al., CVPR 2021) read from its own release layout into hoigen shards.

The paper fine-tunes on DexYCB; ``hoigen ingest dexycb ROOT --out SHARDS`` turns the release into
the shard contract (DESIGN.md), with the conditions made by the same code as render's, so that the
training conditions match the ones synthesis paints on:

- ``skeleton.png``: :func:`hoigen.hand.skeleton.draw_skeleton` of the label's 2D joints (DexYCB's
  21 joints come in hoigen's common order: wrist, then thumb, index, middle, ring, little, each
  from MCP to tip), drawn at the output size;
- ``seg.png``: 0 background, 1 hand, 2 the grasped object, 3, 4, ... the other objects;
- ``normal.png``: :mod:`hoigen.geometry.normals` from the aligned depth, per hand/object region,
  coloured as render's; background (0, 0, 0) like render's, which draws only hand and object.

Files and fields read (layout and keys as in NVlabs/dex-ycb-toolkit, ``dex_ycb_toolkit/dex_ycb.py``,
``sequence_loader.py``, ``coco_eval.py``, ``hpe_eval.py`` and ``examples/visualize_pose.py``)::

    ROOT/calibration/intrinsics/<serial>_640x480.yml   color: fx, fy, ppx, ppy
    ROOT/calibration/mano_<mano_calib>/mano.yml        betas (10)
    ROOT/models/<ycb name>/textured_simple.obj         object meshes (optional here: when present
                                                       the grasped ones go to SHARDS/objects/)
    ROOT/<subject>/<sequence>/meta.yml                 serials, num_frames, ycb_ids, ycb_grasp_ind,
                                                       mano_sides, mano_calib
    ROOT/<subject>/<sequence>/<serial>/color_%06d.jpg               RGB, 640x480
    ROOT/<subject>/<sequence>/<serial>/aligned_depth_to_color_%06d.png   uint16 millimetres
    ROOT/<subject>/<sequence>/<serial>/labels_%06d.npz
        seg       (480, 640) 0 background, YCB class id 1-21 for objects, 255 hand
        pose_y    (num_objects, 3, 4) object poses (mesh -> camera), in meta ycb_ids order
        pose_m    (1, 51) MANO: 3 global rotation + 45 PCA coefficients (manopth ``ncomps=45``,
                  ``flat_hand_mean=False``), then 3 translation (metres); all zero without a hand
        joint_3d  (1, 21, 3) camera frame, metres; all -1 without a hand
        joint_2d  (1, 21, 2) pixels; -1 for a joint not annotated

Frames are those of every ``frame_step``-th frame with an annotated hand. One output shard per
(sequence, camera). Keys: ``{object}_{sequence:04d}_{frame:03d}_{camera:02d}`` with the object id
from the YCB name (``025_mug`` -> ``025-mug``), the sequence numbered over the sorted subjects and
sequences, and the camera's index in ``meta.yml`` serials.

``ann.json``: the world frame is DexYCB's camera frame (``camera.world_to_cam`` = identity, so no
gravity-up world here), hence ``hand.global_orient``/``hand.transl`` are ``pose_m``'s as they are
(MANO rotates about its root joint in both manopth and smplx); ``hand.joints3d`` = ``joint_3d``;
``object.pose`` = the grasped object's ``pose_y``; ``hand.joints2d`` keeps DexYCB's (-1, -1) for a
joint not annotated (``joints_visible`` false). ``hand.hand_pose`` (the full 45-D axis-angle
pose relative to the flat hand, hoigen's convention) = PCA coefficients x ``hands_components`` +
``hands_mean`` of the MANO file, so it needs ``--mano-dir`` with the real ``MANO_RIGHT.pkl``/
``MANO_LEFT.pkl``; without it ``hand_pose`` is null and ``hand.pose_pca`` keeps the coefficients.
``dexycb`` keeps the source (subject, sequence, serial, frame, raw ``pose_m``).

With ``size`` the frame is cropped to its centred square and scaled to ``size`` x ``size``, and the
intrinsics and 2D joints follow (as ``hoigen render --camera dexycb --size S`` does). With
``crop="hoi"`` (``--crop hoi``, the original HOIDiffusion data) the window is instead the square
around the hand and the grasped object (:func:`hoigen.geometry.crop.hoi_crop`: their box grown by 10%
and padded to a square; black, no depth, background outside the frame), scaled to ``size`` when
given; a frame whose label shows neither falls back to the centred square. The normals are computed
after the crop, from the cropped depth and the new K. ``dexycb.crop`` records mode, offset, side, scale.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from hoigen.data.contract import SEG_HAND, SEG_OBJECT, decode_depth
from hoigen.data.runner import Plan, Stage, StageContext, Task
from hoigen.data.schema import Sample, sample_key
from hoigen.errors import HoigenError
from hoigen.geometry.crop import SquareCrop, centre_crop, hoi_crop
from hoigen.ingest.options import IngestOptions
from hoigen.options import record

STAGE = "ingest"
DEXYCB_HAND = 255
RESERVED = ("calibration", "models")


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise HoigenError(
            f"{path}: missing; is this a DexYCB release folder (see `hoigen ingest dexycb --help`)?"
        ) from None
    except yaml.YAMLError as error:
        raise HoigenError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise HoigenError(f"{path}: expected a YAML mapping")
    return data


# DexYCB's YCB class ids (1..21) -> model folder names, as in the toolkit's dex_ycb.py.
YCB_CLASSES = {
    i + 1: name
    for i, name in enumerate(
        (
            "002_master_chef_can",
            "003_cracker_box",
            "004_sugar_box",
            "005_tomato_soup_can",
            "006_mustard_bottle",
            "007_tuna_fish_can",
            "008_pudding_box",
            "009_gelatin_box",
            "010_potted_meat_can",
            "011_banana",
            "019_pitcher_base",
            "021_bleach_cleanser",
            "024_bowl",
            "025_mug",
            "035_power_drill",
            "036_wood_block",
            "037_scissors",
            "040_large_marker",
            "051_large_clamp",
            "052_extra_large_clamp",
            "061_foam_brick",
        )  # fmt: skip
    )
}


def readable(name: str) -> str:
    """``025_mug`` -> ``mug``; ``006_mustard_bottle`` -> ``mustard bottle``."""
    parts = name.split("_")
    return " ".join(parts[1:] if parts and parts[0].isdigit() else parts)


def find_sequences(root: Path, subjects: list[str] | None = None) -> list[Path]:
    """Every ``<subject>/<sequence>`` folder with a ``meta.yml``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise HoigenError(f"{root}: DexYCB folder does not exist; pass the folder holding calibration/ and subjects")
    if not (root / "calibration").is_dir():
        raise HoigenError(f"{root}: no calibration/ folder; pass the DexYCB release root (DEX_YCB_DIR)")
    found = []
    for subject in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in RESERVED):
        if subjects and subject.name not in subjects:
            continue
        found.extend(sorted(q for q in subject.iterdir() if (q / "meta.yml").is_file()))
    if not found:
        raise HoigenError(f"{root}: no <subject>/<sequence>/meta.yml found; is this a DexYCB release folder?")
    return found


def plan_dexycb(
    root: Path, frame_step: int = 1, subjects: list[str] | None = None, serials: list[str] | None = None
) -> list[Task]:
    """One task per (sequence, camera); its source lists the frames to convert (plain, picklable dicts)."""
    root = Path(root)
    tasks: list[Task] = []
    for number, sequence in enumerate(find_sequences(root, subjects)):
        meta = _yaml(sequence / "meta.yml")
        for key in ("serials", "num_frames", "ycb_ids", "ycb_grasp_ind", "mano_sides", "mano_calib"):
            if key not in meta:
                raise HoigenError(f"{sequence / 'meta.yml'}: lacks {key!r}; is this DexYCB's meta.yml?")
        for camera, serial in enumerate(meta["serials"]):
            if serials and str(serial) not in serials:
                continue
            frames = tuple(
                {
                    "root": str(root),
                    "sequence": str(sequence.relative_to(root)),
                    "sequence_number": number,
                    "serial": str(serial),
                    "camera": camera,
                    "frame": f,
                    "frames": int(meta["num_frames"]),
                    "ycb_ids": [int(i) for i in meta["ycb_ids"]],
                    "grasp_index": int(meta["ycb_grasp_ind"]),
                    "side": str(meta["mano_sides"][0]),
                    "mano_calib": str(meta["mano_calib"][0]),
                }
                for f in range(0, int(meta["num_frames"]), max(1, int(frame_step)))
            )
            tasks.append(Task(len(tasks), frames))
    return tasks


@lru_cache(maxsize=64)
def _intrinsics(root: str, serial: str) -> tuple[tuple[float, ...], ...]:
    path = Path(root) / "calibration" / "intrinsics" / f"{serial}_640x480.yml"
    color = _yaml(path).get("color")
    if not isinstance(color, dict) or not all(k in color for k in ("fx", "fy", "ppx", "ppy")):
        raise HoigenError(f"{path}: expected color: {{fx, fy, ppx, ppy}}")
    K = ((float(color["fx"]), 0.0, float(color["ppx"])), (0.0, float(color["fy"]), float(color["ppy"])), (0, 0, 1.0))
    return K


@lru_cache(maxsize=64)
def _betas(root: str, calib: str) -> tuple[float, ...]:
    path = Path(root) / "calibration" / f"mano_{calib}" / "mano.yml"
    betas = _yaml(path).get("betas")
    if not isinstance(betas, list) or len(betas) != 10:
        raise HoigenError(f"{path}: expected betas: a list of 10 numbers")
    return tuple(float(b) for b in betas)


@lru_cache(maxsize=2)
def _mano_pca(mano_dir: str, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(hands_components (45, 45), hands_mean (45,)) of the MANO file for ``side``."""
    from hoigen.hand.model import load_mano_pickle

    path = Path(mano_dir) / f"MANO_{side.upper()}.pkl"
    if not path.is_file():
        raise HoigenError(f"{path}: MANO file not found; pass --mano-dir with MANO_RIGHT.pkl and MANO_LEFT.pkl")
    data = load_mano_pickle(path)
    return np.asarray(data["hands_components"], dtype=np.float64)[:45], np.asarray(data["hands_mean"], np.float64)


def seg_from_dexycb(seg: np.ndarray, ycb_ids: list[int], grasp_index: int) -> np.ndarray:
    """DexYCB labels (0, YCB id, 255 hand) -> hoigen's (0, 1 hand, 2 grasped object, 3.. others)."""
    out = np.zeros(seg.shape, dtype=np.uint8)
    out[seg == DEXYCB_HAND] = SEG_HAND
    grasped = ycb_ids[grasp_index]
    out[seg == grasped] = SEG_OBJECT
    others = [y for y in ycb_ids if y != grasped]
    for i, ycb in enumerate(others):
        out[seg == ycb] = SEG_OBJECT + 1 + i
    return out


def frame_crop(seg: np.ndarray, width: int, height: int, size: int | None, crop: str) -> SquareCrop | None:
    """The frame's crop: ``hoi`` the square around the hand and grasped object (``seg``: hoigen labels),
    ``none`` the centred square when ``size`` is given, else None (the full frame)."""
    if crop == "hoi":
        window = hoi_crop(seg, size)
        if window is not None:
            return window
    return centre_crop(width, height, size) if size is not None else None


def _crop_record(window: SquareCrop | None, crop: str) -> dict[str, Any]:
    if window is None:
        return {"mode": crop, "offset": [0, 0], "side": None, "scale": 1.0}
    return {"mode": crop, "offset": [window.x0, window.y0], "side": window.side, "scale": window.scale}


def convert_frame(
    ref: dict[str, Any], size: int | None, mano_dir: str | None, objects: dict[str, Any], crop: str = "none"
) -> Sample | None:
    """One DexYCB frame as a hoigen sample (None when the frame has no annotated hand)."""
    from hoigen.geometry.normals import encode_normals, normals_from_depth
    from hoigen.hand.skeleton import draw_skeleton

    folder = Path(ref["root"]) / ref["sequence"] / ref["serial"]
    frame = int(ref["frame"])
    label_path = folder / f"labels_{frame:06d}.npz"
    try:
        with np.load(label_path, allow_pickle=False) as label:  # data only: an object array is refused
            fields = {k: np.asarray(label[k]) for k in ("seg", "pose_y", "pose_m", "joint_3d", "joint_2d")}
    except FileNotFoundError:
        raise HoigenError(f"{label_path}: missing; the DexYCB sequence is incomplete (re-extract it)") from None
    except KeyError as error:
        raise HoigenError(f"{label_path}: lacks {error}; expected seg, pose_y, pose_m, joint_3d, joint_2d") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:  # pickled objects, not an .npz, cut
        raise HoigenError(
            f"{label_path}: not a DexYCB label file ({str(error).splitlines()[0][:120]}); re-extract the sequence"
        ) from None
    joints3d = fields["joint_3d"].reshape(21, 3).astype(np.float64)
    if np.all(joints3d == -1):
        return None
    color = cv2.imread(str(folder / f"color_{frame:06d}.jpg"), cv2.IMREAD_COLOR)
    depth = cv2.imread(str(folder / f"aligned_depth_to_color_{frame:06d}.png"), cv2.IMREAD_ANYDEPTH)
    if color is None or depth is None:
        raise HoigenError(f"{folder}: color_{frame:06d}.jpg or aligned_depth_to_color_{frame:06d}.png unreadable")
    height, width = depth.shape
    seg_full = seg_from_dexycb(fields["seg"], ref["ycb_ids"], ref["grasp_index"])
    window = frame_crop(seg_full, width, height, size, crop)
    K = np.array(_intrinsics(ref["root"], ref["serial"]), dtype=np.float64)
    rgb = cv2.cvtColor(color, cv2.COLOR_BGR2RGB)
    seg = seg_full
    joints2d_raw = fields["joint_2d"].reshape(21, 2).astype(np.float64)
    annotated = np.all(joints2d_raw != -1, axis=1)
    joints2d = joints2d_raw
    if window is not None:
        K = window.intrinsics(K)
        rgb = window.apply(rgb)
        depth = window.apply(depth, nearest=True)
        seg = window.apply(seg_full, nearest=True)
        joints2d = window.points(joints2d_raw)
    depth = depth.astype(np.uint16)
    out_h, out_w = seg.shape
    joints2d = np.where(annotated[:, None], joints2d, -1.0)
    inside = (joints2d[:, 0] >= -0.5) & (joints2d[:, 0] < out_w - 0.5) & (joints2d[:, 1] >= -0.5)
    visible = annotated & inside & (joints2d[:, 1] < out_h - 0.5)
    normals, defined = normals_from_depth(decode_depth(depth), K, labels=seg)
    normal_png = encode_normals(normals, defined)
    skeleton = draw_skeleton(joints2d, visible, out_w, out_h)

    pose_m = fields["pose_m"].reshape(-1)[:51].astype(np.float64)
    side = ref["side"]
    hand_pose = None
    if mano_dir is not None:
        components, mean = _mano_pca(mano_dir, side)
        hand_pose = (pose_m[3:48] @ components + mean).tolist()
    grasped = ref["ycb_ids"][ref["grasp_index"]]
    name = YCB_CLASSES[grasped]
    object_id = objects.get(name, {}).get("id") or _object_id(name)
    pose = np.eye(4)
    pose[:3, :4] = fields["pose_y"][ref["grasp_index"]]
    key = sample_key(object_id, int(ref["sequence_number"]), frame, int(ref["camera"]))
    ann = {
        "key": key,
        "world": "camera",
        "hand": {
            "side": side,
            "model": "mano-v1.2",
            "global_orient": pose_m[:3].tolist(),
            "hand_pose": hand_pose,
            "pose_pca": pose_m[3:48].tolist(),
            "betas": list(_betas(ref["root"], ref["mano_calib"])),
            "transl": pose_m[48:51].tolist(),
            "joints3d": joints3d.tolist(),
            "joints2d": joints2d.tolist(),
            "joints_visible": visible.tolist(),
        },
        "object": {
            "id": object_id,
            "name": readable(name),
            "category": objects.get(name, {}).get("category") or _category(name),
            "ycb_id": int(grasped),
            "mesh_sha256": objects.get(name, {}).get("sha256"),
            "pose": pose.tolist(),
            "nocs_from_mesh": objects.get(name, {}).get("nocs_from_mesh"),
        },
        "camera": {"K": K.tolist(), "world_to_cam": np.eye(4).tolist(), "width": out_w, "height": out_h},
        "trajectory": {"frame": frame, "frames": int(ref["frames"])},
        "dexycb": {
            "sequence": ref["sequence"],
            "serial": ref["serial"],
            "frame": frame,
            "ycb_ids": ref["ycb_ids"],
            "ycb_grasp_ind": ref["grasp_index"],
            "pose_m": pose_m.tolist(),
            "crop": _crop_record(window, crop),
        },
    }
    return {
        "__key__": key,
        "ann.json": ann,
        "image.jpg": rgb,
        "depth.png": depth,
        "seg.png": seg,
        "normal.png": normal_png,
        "skeleton.png": skeleton,
    }


def _object_id(name: str) -> str:
    from hoigen.objects.asset import slugify

    return slugify(name)


def _category(name: str) -> str:
    from hoigen.objects.library import guess_category

    return guess_category(name)


def ingest_stage(samples: Iterable[Sample], ctx: StageContext) -> Iterator[Sample]:
    """The runner's stage function: frame references in, converted samples out."""
    opts: IngestOptions = ctx.options
    mano_dir = str(opts.mano_dir) if opts.mano_dir is not None else None
    for ref in samples:
        sample = convert_frame(ref, opts.size, mano_dir, ctx.inputs.object_info, opts.crop)
        if sample is not None:
            yield sample


@dataclass(frozen=True)
class IngestInputs:
    object_info: dict[str, Any]  # the grasped objects' id, category, sha256 and NOCS transform, by YCB name


class IngestStage(Stage):
    """A DexYCB release -> shards (resumable, split over workers/ranks like any stage)."""

    name = STAGE

    def __init__(self, root: Path, options: IngestOptions) -> None:
        self.root, self.options = Path(root), options
        self.assets: list[Any] = []

    @property
    def transform(self) -> Any:
        return ingest_stage

    def plan(self, out_dir: Path, common: Any) -> Plan:
        opts = self.options
        tasks = plan_dexycb(self.root, opts.frame_step, opts.subjects, opts.serials)
        if not tasks:
            raise HoigenError(f"{self.root}: no (sequence, camera) left after --subjects/--serials; check the names")
        if opts.mano_dir is not None:
            for side in sorted({ref["side"] for t in tasks for ref in t.source[:1]}):
                _mano_pca(str(opts.mano_dir), side)  # fail early on a bad --mano-dir
        self.assets, objects = dexycb_objects(self.root, tasks)
        config = {"dataset": "dexycb", "root": str(self.root), **record(opts), "object_info": objects}
        extra = {"input": str(self.root), "objects_dir": str(out_dir.resolve()) if objects else None}
        return Plan(tasks, opts, config, extra=extra, inputs=IngestInputs(objects))

    def prepare(self, out_dir: Path, plan: Plan) -> None:
        from hoigen.objects.library import save_objects

        out_dir.mkdir(parents=True, exist_ok=True)
        if self.assets:
            save_objects(self.assets, out_dir)


def dexycb_objects(root: Path, tasks: list[Task]) -> tuple[list[Any], dict[str, Any]]:
    """The grasped objects' meshes found under ``ROOT/models`` as assets, and their info by YCB name."""
    import trimesh

    from hoigen.objects.asset import ObjectAsset
    from hoigen.trust import check_mesh_file

    grasped = sorted({YCB_CLASSES[ref["ycb_ids"][ref["grasp_index"]]] for t in tasks for ref in t.source[:1]})
    assets, info = [], {}
    for name in grasped:
        path = Path(root) / "models" / name / "textured_simple.obj"
        if not path.is_file():
            continue
        check_mesh_file(path)
        try:
            mesh = trimesh.load(path, force="mesh", process=False)
        except Exception as error:  # noqa: BLE001 - any parser failure is the file's
            raise HoigenError(
                f"{path}: cannot be read as a mesh ({type(error).__name__}); re-extract the models/ folder"
            ) from None
        asset = ObjectAsset.create(_object_id(name), _category(name), mesh.vertices, mesh.faces, str(path))
        assets.append(asset)
        info[name] = {
            "id": asset.id,
            "category": asset.category,
            "sha256": asset.sha256,
            "nocs_from_mesh": np.asarray(asset.nocs_from_mesh).tolist(),
        }
    return assets, info
