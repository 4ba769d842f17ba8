"""Condition images in the conventions public models were trained on: the one place they are made.

hoigen renders ``normal.png``, ``seg.png``, ``skeleton.png`` and fills ``ann.json`` (2D joints and
their visibility, the object category). A public ControlNet or adapter only follows the geometry if
it is fed the map in the convention of its own training data, so each (family, kind) below converts
hoigen's maps to that convention. Every map is (H, W, 3) uint8 RGB at the synthesis size, fed to the
model as float in [0, 1] (``to_tensor``).

ControlNet v1.1 (``family="controlnet"``):

- ``normal`` (control_v11p_sd15_normalbae): RGB = (n + 1) / 2 with R left, G up, B toward the
  viewer -- exactly hoigen's ``normal.png``, which is passed through unchanged (area-resized when
  the synthesis size differs). Background: black (0, 0, 0), hoigen's render default. normalbae's
  training maps have no black (the estimator labels every pixel); black means "no surface here" and
  leaves the background to the prompt, where a flat (128, 128, 255) would ask for a wall.
- ``pose`` (control_v11p_sd15_openpose): the hand as the OpenPose annotator's ``draw_handpose``
  draws it: 20 bones in OpenPose's edge order, bone i coloured HSV(i / 20, 1, 1), then every joint
  as a blue (0, 0, 255) dot; line thickness 2 and dot radius 4 at 512 px, scaled with the image's
  short side; no anti-aliasing. Only visible joints (``hand.joints_visible``) are drawn, a bone only
  when both its ends are. hoigen's joint order (wrist, thumb, index, middle, ring, pinky, each base
  to tip) is OpenPose's hand order.
- ``seg`` (control_v11p_sd15_seg): ADE20K-150 palette colours: the hand as ``person``
  (150, 5, 61), the object as the ADE20K class of ``ADE_FOR_CATEGORY`` (closest class; categories
  not listed go to ``box``), every distractor likewise by its own category (ann.json ``instances``),
  the table (seg id 3) as ``table`` (index 15, (255, 6, 82)). Background: black (0, 0, 0) -- ADE20K
  has no background class and no class is black; choosing a class (``wall``) would ask for it.

HOIDiffusion's T2I-Adapters (``family="adapter"``; the original ``CoAdapter``'s pose, depth and mask
adapters, see ``hoigen.diffusion.convert``), as the original training data prepared them:

- ``pose``: the skeleton image of the original data scripts (the HO-3D ``showHandJoints`` style):
  joint dots of radius 3, then bones as filled ellipses of half-width 3 px (bones shorter than 5 px
  or longer than 150 px, at 512 px, are skipped), bone/joint k coloured base[k // 4] + 35 (k % 4) per
  channel (saturating), with the per-finger base colours of ``HOI_SKELETON_BASE``. Sizes scale with
  the image; visible joints only.
- ``normal``: normals RGB = (n + 1) / 2 (R left, G up, B toward the viewer, the sign convention of
  the original ``depth2norm``), multiplied by the hand+object mask (black background) -- hoigen's
  ``normal.png`` with its background forced to 0. The original computed them from MiDaS depth with a
  Sobel filter and a fixed z (2 pi); hoigen's are the true surface normals (same signs, different
  tilt magnitudes). The mask holds the hand and every object instance (distractors are objects the
  image must show); the table is background, as everything but hand and object was in the original.
- ``seg``: the original "mask" image: flat colours, hand (128, 128, 128), object (153, 51, 51) on
  black (``hoigen.diffusion.conditions.seg_to_rgb``; checked against the repository's sample
  ``static/train/mask.jpg``). The original knows two classes: distractors take the object colour,
  the table is background (black).

``hoi`` (either family's 9-channel HOI ControlNet from ``hoigen train``) is
``hoigen.diffusion.conditions.stack_conditions`` with a blank background.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch

from hoigen.data.contract import SEG_BACKGROUND, SEG_HAND, SEG_OBJECT, SEG_TABLE, sample_instances
from hoigen.diffusion.conditions import CONDITION_MAPS, seg_to_rgb, stack_conditions
from hoigen.errors import HoigenError

CONTROL_KINDS = ("hoi", "normal", "pose", "seg")
ADAPTER_KINDS = ("pose", "normal", "seg")
FAMILIES = ("controlnet", "adapter")

# OpenPose's hand edges: each finger from the wrist out (the same pairs as hoigen.hand.keypoints.HAND_BONES).
OPENPOSE_HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    (0 if k == 0 else 4 * f + k, 4 * f + k + 1) for f in range(5) for k in range(4)
)
OPENPOSE_JOINT_RGB = (0, 0, 255)
OPENPOSE_LINE = 2  # thickness at 512 px
OPENPOSE_RADIUS = 4  # joint dot radius at 512 px
REFERENCE_SIDE = 512

# ADE20K-150: the classes hoigen uses, with their index and palette colour (RGB).
ADE_CLASSES: dict[str, tuple[int, tuple[int, int, int]]] = {
    "person": (12, (150, 5, 61)),
    "box": (41, (0, 255, 20)),
    "computer": (74, (0, 255, 173)),
    "bottle": (98, (0, 255, 10)),
    "food": (120, (255, 204, 0)),
    "pot": (125, (245, 0, 255)),
    "vase": (135, (0, 255, 204)),
    "plate": (142, (0, 255, 184)),
    "glass": (147, (25, 194, 194)),
    "table": (15, (255, 6, 82)),
    "book": (67, (255, 163, 0)),
    "ball": (119, (255, 0, 163)),
    "basket": (112, (92, 255, 0)),
    "bag": (115, (70, 184, 160)),
}
ADE_HAND = "person"
ADE_TABLE = "table"
ADE_FALLBACK = "box"
# hoigen object category (or a word in it) -> ADE20K class. NOCS / procedural categories first.
ADE_FOR_CATEGORY: dict[str, str] = {
    "bottle": "bottle",
    "bowl": "plate",  # no bowl class: plate is the closest tableware
    "camera": "box",  # no camera class: box is the closest shape
    "can": "bottle",  # no can class: bottle is the closest drink container
    "laptop": "computer",
    "mug": "glass",  # "glass, drinking glass"; no cup or mug class
    "box": "box",
    "cup": "glass",
    "glass": "glass",
    "jar": "bottle",
    "pot": "pot",
    "vase": "vase",
    "plate": "plate",
    "book": "book",
    "ball": "ball",
    "basket": "basket",
    "bag": "bag",
    "banana": "food",
    "apple": "food",
    "fruit": "food",
}

# HOIDiffusion's skeleton colours per finger (RGB as their PIL-saved images hold them): wrist, thumb,
# index, middle, ring, pinky; joint/bone k adds 35 * (k % 4) to every channel (saturating).
HOI_SKELETON_BASE = ((139, 53, 255), (0, 56, 255), (43, 140, 237), (37, 168, 36), (147, 147, 0), (70, 17, 145))
HOI_SKELETON_RADIUS = 3  # joint dots and bone half-width at 512 px
HOI_BONE_MIN, HOI_BONE_MAX = 5.0, 150.0  # bone lengths drawn, px at 512


def ade_class(category: str) -> str:
    """The ADE20K class a hoigen object category is painted as (see ``ADE_FOR_CATEGORY``)."""
    name = str(category).lower()
    if name in ADE_FOR_CATEGORY:
        return ADE_FOR_CATEGORY[name]
    for word in name.replace("-", "_").replace(" ", "_").split("_"):
        if word in ADE_FOR_CATEGORY:
            return ADE_FOR_CATEGORY[word]
    return ADE_FALLBACK


def ade_colour(name: str) -> tuple[int, int, int]:
    return ADE_CLASSES[name][1]


def _scale(side: int, value: float) -> int:
    return max(1, int(round(value * side / REFERENCE_SIDE)))


def _joints(ann: Mapping[str, Any], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """2D joints scaled from the render's image size to (width, height), and their visibility."""
    hand = ann.get("hand") or {}
    if hand.get("joints2d") is None:
        raise HoigenError(f"{ann.get('key', '?')}: ann.json has no hand.joints2d; pose conditions need render output")
    pts = np.asarray(hand["joints2d"], dtype=np.float64).reshape(21, 2)
    visible = np.asarray(hand.get("joints_visible", [True] * 21), dtype=bool).reshape(21)
    camera = ann.get("camera") or {}
    src_w, src_h = float(camera.get("width") or width), float(camera.get("height") or height)
    # pixel centres at integers: scale about -0.5
    pts = (pts + 0.5) * np.array([width / src_w, height / src_h]) - 0.5
    visible = visible & np.all(np.isfinite(pts), axis=1)
    return pts, visible


def draw_openpose_hand(joints2d: np.ndarray, visible: np.ndarray, width: int, height: int) -> np.ndarray:
    """The hand as ControlNet v1.1's OpenPose annotator draws it (see the module docstring)."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    side = min(width, height)
    thickness, radius = _scale(side, OPENPOSE_LINE), _scale(side, OPENPOSE_RADIUS)
    pts = np.round(joints2d).astype(np.int64)
    for i, (a, b) in enumerate(OPENPOSE_HAND_EDGES):
        if visible[a] and visible[b]:
            colour = tuple(255.0 * c for c in colorsys.hsv_to_rgb(i / len(OPENPOSE_HAND_EDGES), 1.0, 1.0))
            cv2.line(canvas, (int(pts[a, 0]), int(pts[a, 1])), (int(pts[b, 0]), int(pts[b, 1])), colour, thickness)
    for j in range(21):
        if visible[j]:
            cv2.circle(canvas, (int(pts[j, 0]), int(pts[j, 1])), radius, OPENPOSE_JOINT_RGB, thickness=-1)
    return canvas


def hoi_skeleton_colour(k: int) -> tuple[int, int, int]:
    """Colour of joint or bone ``k`` in HOIDiffusion's skeleton images (RGB, saturated at 255)."""
    base = HOI_SKELETON_BASE[k // 4]
    return tuple(min(255, c + 35 * (k % 4)) for c in base)  # type: ignore[return-value]


def draw_hoidiffusion_hand(joints2d: np.ndarray, visible: np.ndarray, width: int, height: int) -> np.ndarray:
    """The hand as HOIDiffusion's data scripts drew their skeleton images (see the module docstring)."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    side = min(width, height)
    radius = _scale(side, HOI_SKELETON_RADIUS)
    low, high = HOI_BONE_MIN * side / REFERENCE_SIDE, HOI_BONE_MAX * side / REFERENCE_SIDE
    pts = np.round(joints2d).astype(np.int64)
    for j in range(21):
        if visible[j]:
            cv2.circle(canvas, (int(pts[j, 0]), int(pts[j, 1])), radius, hoi_skeleton_colour(j), thickness=-1)
    for k, (a, b) in enumerate(OPENPOSE_HAND_EDGES):
        if not (visible[a] and visible[b]):
            continue
        d = pts[a] - pts[b]
        length = float(np.hypot(*d))
        if not low < length < high:
            continue
        centre = (int((pts[a, 0] + pts[b, 0]) // 2), int((pts[a, 1] + pts[b, 1]) // 2))
        angle = int(np.degrees(np.arctan2(d[1], d[0])))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), radius), angle, 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, hoi_skeleton_colour(k))
    return canvas


def _resize(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]


def _hoi_seg(sample: Mapping[str, Any], size: int) -> np.ndarray:
    """seg.png at ``size`` with the original's two classes: the table to background, distractors to the object."""
    seg = _resize(np.asarray(sample["seg.png"]), size, nearest=True)
    return np.where(seg == SEG_TABLE, SEG_BACKGROUND, np.where(seg > SEG_TABLE, SEG_OBJECT, seg)).astype(np.uint8)


def _masked_normal(sample: Mapping[str, Any], size: int) -> np.ndarray:
    normal = _resize(_rgb(sample["normal.png"]), size)
    return np.where((_hoi_seg(sample, size) != SEG_BACKGROUND)[:, :, None], normal, 0).astype(np.uint8)


def _ade_seg(sample: Mapping[str, Any], size: int) -> np.ndarray:
    seg = _resize(np.asarray(sample["seg.png"]), size, nearest=True)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[SEG_HAND] = ade_colour(ADE_HAND)
    palette[SEG_TABLE] = ade_colour(ADE_TABLE)
    palette[SEG_TABLE + 1 :] = ade_colour(ADE_FALLBACK)  # a distractor ann.json does not list
    for inst in sample_instances(sample["ann.json"]):  # the grasped object (seg id 2) and every distractor
        palette[int(inst["seg_id"])] = ade_colour(ade_class(inst.get("category", "")))
    return palette[seg]


def condition_map(sample: Mapping[str, Any], kind: str, family: str, size: int) -> np.ndarray:
    """The (size, size, C) uint8 map fed to a ``family`` model of ``kind`` (C = 9 for ``hoi``, else 3)."""
    if kind == "hoi":
        stacked = stack_conditions(
            sample["normal.png"], sample["seg.png"], sample["skeleton.png"], size, blank_background=True
        )
        return (stacked * 255.0).round().byte().permute(1, 2, 0).numpy()
    if family == "controlnet":
        if kind == "normal":
            return _resize(_rgb(sample["normal.png"]), size)
        if kind == "pose":
            return draw_openpose_hand(*_joints(sample["ann.json"], size, size), size, size)
        if kind == "seg":
            return _ade_seg(sample, size)
    elif family == "adapter":
        if kind == "pose":
            return draw_hoidiffusion_hand(*_joints(sample["ann.json"], size, size), size, size)
        if kind == "normal":
            return _masked_normal(sample, size)
        if kind == "seg":
            return seg_to_rgb(_hoi_seg(sample, size))
    raise HoigenError(f"no {family} condition of kind {kind!r}; use one of {', '.join(CONTROL_KINDS)}")


def to_tensor(maps: list[np.ndarray]) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] from uint8 (H, W, C) maps."""
    return torch.from_numpy(np.stack(maps).transpose(0, 3, 1, 2).copy()).float().div_(255.0)


def condition_tensors(
    samples: list[Mapping[str, Any]], kinds: list[str], family: str, size: int
) -> list[torch.Tensor]:
    """One (B, C, size, size) tensor per model kind, in the order of ``kinds``."""
    out = []
    for kind in kinds:
        if kind == "hoi":
            out.append(
                torch.stack(
                    [
                        stack_conditions(s["normal.png"], s["seg.png"], s["skeleton.png"], size, blank_background=True)
                        for s in samples
                    ]
                )
            )
        else:
            out.append(to_tensor([condition_map(s, kind, family, size) for s in samples]))
    return out


def saved_maps(tensors: list[torch.Tensor], kinds: list[str], index: int) -> dict[str, np.ndarray]:
    """``cond_<kind>.png`` members for sample ``index`` of a batch (``cond_hoi_<map>.png`` for the 9 channels)."""
    out: dict[str, np.ndarray] = {}
    for kind, tensor in zip(kinds, tensors, strict=True):
        image = (tensor[index].clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).numpy()
        if kind == "hoi":
            for i, name in enumerate(CONDITION_MAPS):
                out[f"cond_hoi_{name}.png"] = image[:, :, 3 * i : 3 * i + 3].copy()
        else:
            out[f"cond_{kind}.png"] = image.copy()
    return out


# --- option parsing (kept here, free of diffusers, so the options can be checked early) ---------------


def _as_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def parse_models(
    option: str, value: str | list[str] | None, kinds: tuple[str, ...], bare: str | None
) -> list[tuple[str, str]]:
    """``KIND=ID|DIR`` values (repeatable) -> [(kind, name)]; a bare value has kind ``bare`` (None: refused)."""
    out: list[tuple[str, str]] = []
    for item in _as_list(value):
        kind, sep, name = item.partition("=")
        if sep and kind.strip() in kinds:
            kind, name = kind.strip(), name.strip()
        elif bare is not None:
            kind, name = bare, item.strip()
        else:
            raise HoigenError(f"{option} {item!r}: write KIND=ID|DIR with KIND one of {', '.join(kinds)}")
        if not name:
            raise HoigenError(f"{option} {item!r}: no model after '='; e.g. {option} {kinds[-1]}=DIR")
        if any(k == kind for k, _ in out):
            raise HoigenError(f"{option}: kind {kind!r} given twice; one model per kind")
        out.append((kind, name))
    return out


def parse_loras(value: str | list[str] | None) -> list[tuple[str, float]]:
    """``ID|DIR[:SCALE]`` values -> [(name, scale)] (scale 1 when left out)."""
    out = []
    for item in _as_list(value):
        name, sep, number = item.rpartition(":")
        if sep and name and not number.startswith(("/", "\\")):
            try:
                out.append((name, float(number)))
                continue
            except ValueError:
                pass
        out.append((item, 1.0))
    return out


def parse_scales(option: str, value: str | float | None, kinds: list[str]) -> list[float]:
    """``X`` (all) or ``KIND=X,...`` (missing kinds 1) -> one scale per kind, in ``kinds`` order."""
    if value is None:
        return [1.0] * len(kinds)
    text = str(value).strip()
    try:
        return [_finite(option, float(text))] * len(kinds)
    except ValueError:
        pass
    scales = dict.fromkeys(kinds, 1.0)
    for part in text.split(","):
        if not part.strip():
            continue
        kind, sep, number = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in scales:
            known = ", ".join(kinds) or "(none)"
            raise HoigenError(f"{option} {part.strip()!r}: write KIND=X with KIND one of {known}")
        try:
            scales[kind] = _finite(option, float(number))
        except ValueError:
            raise HoigenError(f"{option} {part.strip()!r}: {number.strip()!r} is not a number") from None
    return [scales[k] for k in kinds]


def _finite(option: str, value: float) -> float:
    if not np.isfinite(value):
        raise HoigenError(f"{option}: {value} is not a finite number")
    return value


def init_tensor(samples: list[Mapping[str, Any]], size: int) -> torch.Tensor:
    """``shade.png`` of each sample at the synthesis size, (B, 3, H, W) in [0, 1] (``--init shade``)."""
    for s in samples:
        if "shade.png" not in s:
            raise HoigenError(f"{s.get('__key__', '?')}: no shade.png in the input; --init shade needs render output")
    return to_tensor([_resize(_rgb(s["shade.png"]), size) for s in samples])


def parse_controls(
    controlnet: str | list[str] | None, adapter: str | list[str] | None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``--controlnet`` and ``--adapter`` values -> ([(kind, name)], [(kind, name)]); ``none`` -> [("none", "")]."""
    controlnets = parse_models("--controlnet", controlnet, CONTROL_KINDS, bare="hoi")
    if any(name.lower() == "none" for _, name in controlnets):
        if len(controlnets) > 1 or controlnets[0][0] != "hoi":
            raise HoigenError("--controlnet none stands alone (plain text-to-image); drop the other --controlnet")
        controlnets = [("none", "")]
    adapters = parse_models("--adapter", adapter, ADAPTER_KINDS, bare=None)
    return controlnets, adapters
