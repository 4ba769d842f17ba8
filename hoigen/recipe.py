"""Recipes: ``hoigen run RECIPE`` runs every stage section a YAML file names, in stage order.

A recipe is a mapping with ``seed``, ``out``, ``workers``, ``name`` and one section per stage; each
section is that stage's options (the same fields as its CLI flags, checked the same way). A bad key
or value is one line naming the file, the section and the key, with the closest valid key for a typo.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from hoigen.diffusion.options import SynthOptions, TrainOptions
from hoigen.export.options import ExportOptions
from hoigen.grasp.options import GraspOptions
from hoigen.options import Common, OptionError, UsageError, check_keys, coerce, field_types
from hoigen.render.options import RenderOptions

SECTIONS: dict[str, type] = {
    "grasp": GraspOptions,
    "render": RenderOptions,
    "synthesize": SynthOptions,
    "export": ExportOptions,
    "train": TrainOptions,
}


@dataclass(frozen=True)
class Recipe:
    """A whole chain: ``hoigen run RECIPE`` runs every section present, in stage order."""

    seed: int = 0
    out: Path = Path("out")
    grasp: GraspOptions | None = None
    render: RenderOptions | None = None
    synthesize: SynthOptions | None = None
    export: ExportOptions | None = None
    train: TrainOptions | None = None
    workers: int = 1
    name: str = ""


def build_section(cls: type, values: Any, where: str, base: Path | None = None) -> Any:
    """Options ``cls`` from a recipe section; relative paths resolve against ``base`` (None: the current folder)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UsageError(f"{where}: a section must be a mapping of options, got {values!r}")
    check_keys(values, [f.name for f in fields(cls)], where)
    kinds = field_types(cls)
    values = dict(values)
    for key, value in values.items():
        if base is not None and kinds[key].base is Path and isinstance(value, str) and not Path(value).is_absolute():
            values[key] = base / value
    try:
        return cls(**values)
    except OptionError as exc:
        raise UsageError(f"{where}: {exc.name} {exc.problem}") from None


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe YAML; paths inside it are relative to the current directory."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: recipe not found; see recipes/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a recipe must be a mapping of sections")
    check_keys(data, ["seed", "out", "workers", "name", *SECTIONS], str(path))
    head: dict[str, Any] = {}
    for key, kind in (("seed", int), ("out", Path), ("workers", int), ("name", str)):
        if key in data:
            try:
                head[key] = coerce(data[key], kind, key)
            except OptionError as exc:
                raise UsageError(f"{path}: {exc.name} {exc.problem}") from None
    try:  # seed and workers are checked as the run options are (ranges included)
        Common(**{k: v for k, v in head.items() if k in ("seed", "workers")})
    except OptionError as exc:
        raise UsageError(f"{path}: {exc.name} {exc.problem}") from None
    recipe = Recipe(**{"name": path.stem, **head})
    for section, cls in SECTIONS.items():
        if section in data:
            recipe = replace(recipe, **{section: build_section(cls, data[section], f"{path} [{section}]")})
    return recipe
