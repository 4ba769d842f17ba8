"""The condition tensor: the one definition shared by synthesis (``generate``) and training.

HOIDiffusion conditions its diffusion model on three renderings of the hand-object geometry:
surface normals, a segmentation image and the drawn 2D hand skeleton. Here they are stacked, in
the order of ``CONDITION_MAPS``, into one float tensor of ``CONDITIONING_CHANNELS`` = 9 channels
in [0, 1]:

- channels 0-2: ``normal.png`` (camera-frame normals as RGB),
- channels 3-5: ``seg.png`` rendered as RGB colours (``seg_to_rgb``; the colours of the original
  HOIDiffusion code: background black, hand (128, 128, 128), the grasped object (153, 51, 51); then
  the table (seg id 3) :data:`SEG_TABLE_RGB` and distractor k (seg id 4 + k) the k-th of
  :data:`SEG_EXTRA_OBJECT_RGB`, cycling: docs/concepts/scenes.md),
- channels 6-8: ``skeleton.png`` (the drawn skeleton, RGB).

A blank condition (all zeros, ``blank_conditions``) stands for "no hand, no object": training pairs
it with background-only images (the paper's background regularisation), so a model trained that way
paints free, text-driven background wherever the conditions are blank. At synthesis the background
pixels (segmentation 0, no skeleton stroke) are therefore set to exactly the blank value in all nine
channels (``stack_conditions(..., blank_background=True)``): resizing or a renderer's anti-aliasing
can otherwise leave faint normals there, which the model would read as geometry.

Per-condition scales (``parse_condition_scales``, ``scale_conditions``) weight each map's channels
before the ControlNet: 0 blanks a map, 1 leaves it; values above 1 exaggerate it (the tensor may then
leave [0, 1], which the ControlNet accepts). The whole ControlNet output has its own weight
(``control_scale`` of ``hoigen.diffusion.pipeline.generate``).
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
import torch

from hoigen.data.contract import SEG_BACKGROUND, SEG_FIRST_DISTRACTOR, SEG_HAND, SEG_OBJECT, SEG_TABLE
from hoigen.errors import HoigenError

CONDITION_MAPS = ("normal", "seg", "skeleton")
CONDITIONING_CHANNELS = 9

# seg id (hoigen.data.contract) -> RGB: background, hand, object as in HOIDiffusion; the table its own colour (a dull
# wood brown, far from every other colour here); distractors (4, 5, ...) cycle through the extra colours.
SEG_BACKGROUND_RGB = (0, 0, 0)
SEG_HAND_RGB = (128, 128, 128)
SEG_OBJECT_RGB = (153, 51, 51)
SEG_TABLE_RGB = (102, 76, 25)
SEG_EXTRA_OBJECT_RGB = (
    (51, 102, 153),
    (51, 153, 51),
    (153, 153, 51),
    (153, 51, 153),
    (51, 153, 153),
    (204, 102, 0),
    (102, 0, 204),
    (0, 102, 51),
)


def _seg_palette() -> np.ndarray:
    """A (256, 3) uint8 lookup table from seg id to RGB."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[SEG_BACKGROUND] = SEG_BACKGROUND_RGB
    palette[SEG_HAND] = SEG_HAND_RGB
    palette[SEG_OBJECT] = SEG_OBJECT_RGB
    palette[SEG_TABLE] = SEG_TABLE_RGB
    for seg_id in range(SEG_FIRST_DISTRACTOR, 256):
        palette[seg_id] = SEG_EXTRA_OBJECT_RGB[(seg_id - SEG_FIRST_DISTRACTOR) % len(SEG_EXTRA_OBJECT_RGB)]
    return palette


SEG_PALETTE = _seg_palette()


def seg_to_rgb(seg: np.ndarray) -> np.ndarray:
    """Colour a (H, W) uint8 segmentation (0 background, 1 hand, 2 object, 3 table, 4+ distractors) as RGB uint8."""
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"segmentation must be (H, W), got shape {seg.shape}")
    if seg.dtype != np.uint8:
        if seg.size and (seg.min() < 0 or seg.max() > 255):
            raise ValueError("segmentation ids must lie in 0..255")
        seg = seg.astype(np.uint8)
    return SEG_PALETTE[seg]


def _as_rgb(name: str, image: np.ndarray) -> np.ndarray:
    """Accept (H, W, 3), (H, W, 4) (alpha dropped) or (H, W) (grey repeated) uint8 images."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name} map must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise ValueError(f"{name} map must be (H, W, 3) RGB, got shape {image.shape}")


def _target_size(size: int | tuple[int, int] | None, shape: tuple[int, int]) -> tuple[int, int]:
    """(height, width) to resize to; ``size`` is a square side or (height, width)."""
    if size is None:
        return shape
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def stack_conditions(
    normal: np.ndarray,
    seg: np.ndarray,
    skeleton: np.ndarray,
    size: int | tuple[int, int] | None = None,
    blank_background: bool = False,
) -> torch.Tensor:
    """Stack normal RGB, coloured segmentation and skeleton RGB into a (9, H, W) float tensor in [0, 1].

    With ``size`` (a side, or (height, width)) the maps are resized: area averaging for normals and
    skeleton, nearest neighbour for the segmentation (so no mixed colours appear). With
    ``blank_background`` every channel is exactly 0 where the segmentation is background and no
    skeleton stroke is drawn (the blank condition of background regularisation).
    """
    normal = _as_rgb("normal", normal)
    skeleton = _as_rgb("skeleton", skeleton)
    seg = np.asarray(seg)
    shape = seg.shape[:2]
    if normal.shape[:2] != shape or skeleton.shape[:2] != shape:
        raise ValueError(
            f"condition maps differ in size: normal {normal.shape[:2]}, seg {shape}, "
            f"skeleton {skeleton.shape[:2]}"
        )
    height, width = _target_size(size, shape)
    seg_rgb = seg_to_rgb(seg)
    if (height, width) != shape:
        normal = cv2.resize(normal, (width, height), interpolation=cv2.INTER_AREA)
        skeleton = cv2.resize(skeleton, (width, height), interpolation=cv2.INTER_AREA)
        seg_rgb = cv2.resize(seg_rgb, (width, height), interpolation=cv2.INTER_NEAREST)
    stacked = np.concatenate([normal, seg_rgb, skeleton], axis=2)
    if blank_background:
        background = ~seg_rgb.any(axis=2) & ~skeleton.any(axis=2)
        stacked[background] = 0
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(2, 0, 1))).float().div_(255.0)


def blank_conditions(height: int, width: int) -> torch.Tensor:
    """The blank condition (9, H, W) of zeros: no hand, no object (background regularisation)."""
    return torch.zeros(CONDITIONING_CHANNELS, height, width)


def split_conditions(conditions: torch.Tensor) -> dict[str, np.ndarray]:
    """Undo ``stack_conditions`` for viewing: (9, H, W) in [0, 1] -> {map name: (H, W, 3) uint8}."""
    if conditions.ndim != 3 or conditions.shape[0] != CONDITIONING_CHANNELS:
        raise ValueError(f"conditions must be ({CONDITIONING_CHANNELS}, H, W), got {tuple(conditions.shape)}")
    array = (conditions.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return {name: array[3 * i : 3 * i + 3].transpose(1, 2, 0).copy() for i, name in enumerate(CONDITION_MAPS)}


def parse_condition_scales(value: str | Mapping[str, float] | None) -> tuple[float, float, float]:
    """``"normal=1,seg=0.5,skeleton=1"`` (or a mapping) -> scales in ``CONDITION_MAPS`` order; missing = 1."""
    if value is None:
        return (1.0, 1.0, 1.0)
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    else:
        items = []
        for part in str(value).split(","):
            if not part.strip():
                continue
            name, sep, number = part.partition("=")
            if not sep:
                raise HoigenError(f"--condition-scales: {part.strip()!r} is not name=value; e.g. normal=1,seg=0.5")
            items.append((name.strip(), number.strip()))
    scales = dict.fromkeys(CONDITION_MAPS, 1.0)
    for name, number in items:
        if name not in scales:
            raise HoigenError(
                f"--condition-scales: unknown map {name!r}; use {', '.join(CONDITION_MAPS)}"
            )
        try:
            scale = float(number)
        except (TypeError, ValueError):
            raise HoigenError(f"--condition-scales: {name}={number!r} is not a number") from None
        if not np.isfinite(scale) or scale < 0:
            raise HoigenError(f"--condition-scales: {name}={number} must be a finite number >= 0")
        scales[name] = scale
    return tuple(scales[name] for name in CONDITION_MAPS)  # type: ignore[return-value]


def scale_conditions(conditions: torch.Tensor, scales: tuple[float, ...] | None) -> torch.Tensor:
    """Multiply each map's three channels of a (..., 9, H, W) tensor by its scale (no copy when all are 1)."""
    if scales is None or all(float(s) == 1.0 for s in scales):
        return conditions
    if len(scales) != len(CONDITION_MAPS):
        raise ValueError(f"need {len(CONDITION_MAPS)} scales ({', '.join(CONDITION_MAPS)}), got {len(scales)}")
    weights = torch.tensor([float(s) for s in scales for _ in range(3)], dtype=conditions.dtype)
    return conditions * weights.to(conditions.device).view(-1, 1, 1)
