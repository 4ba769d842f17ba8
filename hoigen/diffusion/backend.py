"""The diffusers / transformers classes hoigen uses, imported once with their chatter silenced.

Importing diffusers' pipelines makes transformers warn that ``CLIPImageProcessor`` requires
torchvision (harmless: no image processor is used, and torchvision must not be installed here),
and loading or saving prints tqdm bars. ``quiet()`` turns both off for a block and restores the
libraries' own settings afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import diffusers.utils.logging as diffusers_logging
import transformers.utils.logging as transformers_logging


@contextmanager
def quiet() -> Iterator[None]:
    """Silence diffusers/transformers warnings and progress bars inside the block."""
    saved = [
        (lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
        for lib in (diffusers_logging, transformers_logging)
    ]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bars in saved:
            lib.set_verbosity(verbosity)
            if bars:
                lib.enable_progress_bar()


with quiet():
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.utils.torch_utils import randn_tensor
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

__all__ = [
    "AutoencoderKL",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTokenizer",
    "ControlNetModel",
    "DDIMScheduler",
    "DDPMScheduler",
    "StableDiffusionControlNetPipeline",
    "StableDiffusionPipeline",
    "UNet2DConditionModel",
    "quiet",
    "randn_tensor",
]
