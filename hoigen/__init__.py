"""hoigen: a command-line factory for synthetic 3D hand-object interaction data.

The public API (imported on first use, so ``import hoigen`` stays fast)::

    import hoigen

    hoigen.grasp(None, "out/grasp", grasps=1)          # objects (None: procedural) -> grasp shards
    hoigen.render("out/grasp", "out/render", size=64)  # -> condition maps and annotations
    hoigen.synthesize("out/render", "out/synth")       # -> painted images
    hoigen.export("out/synth", "out/nocs")             # -> a NOCS or BOP dataset
    hoigen.train("out/synth", "out/model")             # -> a fine-tuned diffusion pipeline

Each takes (input, output folder, options object or None, run options or None, **option overrides)
and returns a :class:`hoigen.RunSummary` (see :mod:`hoigen.api`). ``hoigen.grasp``, ``hoigen.render``
and ``hoigen.export`` are also the stage packages: calling the package calls its API function.
"""

from __future__ import annotations

import importlib
import os
import types
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "synthesize": "hoigen.api",
    "train": "hoigen.api",
    "RunSummary": "hoigen.data.runner",
    "Common": "hoigen.options",
    "GraspOptions": "hoigen.grasp.options",
    "RenderOptions": "hoigen.render.options",
    "SynthOptions": "hoigen.diffusion.options",
    "TrainOptions": "hoigen.diffusion.options",
    "ExportOptions": "hoigen.export.options",
    "HoigenError": "hoigen.errors",
}
_STAGE_PACKAGES = ("grasp", "render", "export")  # packages that are also API functions


class StagePackage(types.ModuleType):
    """A stage package that is callable: ``hoigen.grasp(...)`` runs :func:`hoigen.api.grasp`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from hoigen import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<hoigen stage package {self.__name__!r}, callable: hoigen.api.{self.__name__.rpartition('.')[2]}>"


def __getattr__(name: str) -> Any:
    if name in _STAGE_PACKAGES:
        return importlib.import_module(f"hoigen.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hoigen' has no attribute {name!r}")


__all__ = ["__version__", *_STAGE_PACKAGES, *_LAZY]


if os.environ.get("HOIGEN_LOG_LEVEL"):  # a worker process of a CLI run: the CLI's warning format and level
    from hoigen.logs import configure_from_env

    configure_from_env()
