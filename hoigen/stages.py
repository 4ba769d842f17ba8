"""The earlier call shapes of the stage functions, kept for callers not yet moved to :mod:`hoigen.api`
(the bench and soak scripts). New code calls ``hoigen.grasp(...)`` etc.; this module can go once they do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hoigen import api
from hoigen.data.runner import RunSummary
from hoigen.diffusion.options import SynthOptions, TrainOptions
from hoigen.export.options import ExportOptions
from hoigen.grasp.options import GraspOptions
from hoigen.options import Common
from hoigen.render.options import RenderOptions


def grasp(opts: GraspOptions, out: Path, common: Common) -> RunSummary:
    return api.grasp(None, out, opts, common)


def render(in_dir: Path, out: Path, opts: RenderOptions, common: Common) -> RunSummary:
    return api.render(in_dir, out, opts, common)


def synthesize(in_dir: Path, out: Path, opts: SynthOptions, common: Common) -> RunSummary:
    return api.synthesize(in_dir, out, opts, common)


def export(in_dir: Path, out: Path, opts: ExportOptions, quiet: bool = False) -> RunSummary:
    return api.export(in_dir, out, opts, Common(quiet=quiet))


def train(in_dir: Path, out: Path, opts: TrainOptions, common: Common) -> dict[str, Any]:
    return api.train(in_dir, out, opts, common).stats
