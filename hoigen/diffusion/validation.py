"""Validation images during training: the same conditions, prompts and seeds every time.

Every ``--validate-every`` steps the current model (the EMA weights when EMA is on) paints one
image per validation example -- fixed conditions taken from the first training samples, their
captions, seeds 0..n-1 -- with :func:`hoigen.diffusion.pipeline.generate`, the function synthesis
uses. The results go to ``OUT/validation/step-XXXXXXXX.png`` as a contact sheet (one row per
example: painted image, normal, seg, skeleton), so a run's progress can be seen at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hoigen.data.contract import SEG_BACKGROUND, SEG_HAND, SEG_OBJECT
from hoigen.diffusion.conditions import SEG_HAND_RGB, SEG_OBJECT_RGB, split_conditions

VALIDATION_DIR = "validation"


def seg_ids_from_rgb(seg_rgb: np.ndarray) -> np.ndarray:
    """Coloured segmentation (as in the condition tensor) back to ids 0 / 1 hand / 2 object / 3 other."""
    ids = np.where(seg_rgb.any(axis=2), SEG_OBJECT + 1, SEG_BACKGROUND).astype(np.uint8)
    ids[np.all(seg_rgb == SEG_HAND_RGB, axis=2)] = SEG_HAND
    ids[np.all(seg_rgb == SEG_OBJECT_RGB, axis=2)] = SEG_OBJECT
    return ids


def render_validation(
    pipe: Any,
    examples: list[dict[str, Any]],
    out_dir: Path,
    step: int,
    steps: int,
    guidance: float,
) -> Path:
    """Paint the validation examples with ``pipe`` and write their contact sheet; returns its path."""
    from hoigen.diffusion.pipeline import generate
    from hoigen.preview import contact_sheet

    conditions = torch.stack([e["conditions"] for e in examples])
    prompts = [e["prompt"] for e in examples]
    images = generate(pipe, conditions, prompts, list(range(len(examples))), steps=steps, guidance=guidance)
    rows = []
    for i, (example, image) in enumerate(zip(examples, images, strict=True)):
        maps = split_conditions(example["conditions"])
        rows.append(
            {
                "__key__": f"step {step} #{i} {example.get('key', '')}".strip(),
                "image.jpg": image,
                "normal.png": maps["normal"],
                "seg.png": seg_ids_from_rgb(maps["seg"]),
                "skeleton.png": maps["skeleton"],
            }
        )
    path = Path(out_dir) / VALIDATION_DIR / f"step-{step:08d}.png"
    return contact_sheet(rows, path, max_rows=len(rows))
