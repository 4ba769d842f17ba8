"""The diffusion layer: condition tensor, pipeline loading and generation, prompts, samplers, video, training.

Names are imported lazily so that ``hoigen.diffusion.conditions`` does not pull in diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CONDITION_MAPS": "conditions",
    "CONDITIONING_CHANNELS": "conditions",
    "blank_conditions": "conditions",
    "seg_to_rgb": "conditions",
    "split_conditions": "conditions",
    "stack_conditions": "conditions",
    "parse_condition_scales": "conditions",
    "scale_conditions": "conditions",
    "SCHEDULER_NAMES": "schedulers",
    "set_scheduler": "schedulers",
    "AnchorFrameAttnProcessor": "video",
    "anchor_attention": "video",
    "trajectory_groups": "video",
    "write_mp4": "video",
    "tune_pipeline": "pipeline",
    "DEFAULT_NEGATIVE_PROMPT": "prompts",
    "DEFAULT_PROMPTS": "prompts",
    "DEFAULT_BACKGROUNDS": "prompts",
    "fill_prompt": "prompts",
    "load_prompts": "prompts",
    "TINY_MODEL_NAME": "tiny",
    "build_tiny_pipeline": "tiny",
    "DEFAULT_GUIDANCE": "pipeline",
    "DEFAULT_STEPS": "pipeline",
    "generate": "pipeline",
    "load_pipeline": "pipeline",
    "ControlNetTrainer": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hoigen.diffusion' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hoigen.diffusion.{_EXPORTS[name]}"), name)
