"""The export stage's options (declared once: CLI flags, recipe keys and the stage read these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hoigen.options import OptionError, option, validate

EXPORT_FORMATS = ("nocs", "bop", "coco")


@dataclass(frozen=True)
class ExportOptions:
    format: str = option(
        "nocs", "Dataset format: nocs, bop or coco (layouts: docs/reference/exports.md).", choices=EXPORT_FORMATS
    )
    split: str = option("train", "Split name.")
    val_fraction: float = option(0.0, "Share of grasp trajectories written to the val split.")
    mix: Path | None = option(
        None, "A real NOCS-layout dataset to mix with (the paper's mixed training set): writes mixed_<split>_list.txt."
    )
    ratio: float = option(0.5, "Synthetic share of the mixed list.")
    mix_mode: str = option("replace", "replace (keep the real set's size) or add.")

    def __post_init__(self) -> None:
        validate(self)
        if not 0.0 <= self.val_fraction < 1.0:
            raise OptionError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if self.mix is not None and self.format != "nocs":
            raise OptionError("mix", "writes NOCS list files; use it with --format nocs")
        if not self.split or "/" in self.split or self.split == "val" and self.val_fraction > 0:
            raise OptionError("split", f"'{self.split}' is not a split name (no '/', not 'val' with --val-fraction)")
