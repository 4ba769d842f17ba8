"""Where the options used to live; they are now declared by each stage (``hoigen/<stage>/options.py``),
run options in :mod:`hoigen.options` and recipes in :mod:`hoigen.recipe`. These names are kept for
callers not yet moved; import from the new places."""

from __future__ import annotations

from hoigen.diffusion.options import SynthOptions, TrainOptions
from hoigen.export.options import ExportOptions
from hoigen.grasp.options import GraspOptions
from hoigen.options import Common
from hoigen.recipe import Recipe, load_recipe
from hoigen.render.options import RenderOptions

__all__ = [
    "Common",
    "ExportOptions",
    "GraspOptions",
    "Recipe",
    "RenderOptions",
    "SynthOptions",
    "TrainOptions",
    "load_recipe",
]
