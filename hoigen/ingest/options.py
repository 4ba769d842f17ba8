"""The DexYCB ingest options (declared once: CLI flags and the stage read these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hoigen.geometry import CROP_MODES
from hoigen.options import option, validate


@dataclass(frozen=True)
class IngestOptions:
    size: int | None = option(
        None,
        "Centre-crop to a square (or --crop hoi) and scale to SIZE px (K and 2D joints follow).",
        min=8,
        default_text="640x480",
    )
    crop: str = option(
        "none",
        "hoi: crop each frame to the square around the hand and grasped object (their box + 10%, padded; the "
        "original HOIDiffusion data), scaled to --size when given; none: the centred square with --size.",
        choices=CROP_MODES,
    )
    frame_step: int = option(1, "Keep every N-th frame.", min=1)
    subjects: list[str] | None = option(None, "Comma-separated subject folders.", split=",", default_text="all")
    serials: list[str] | None = option(None, "Comma-separated camera serials.", split=",", default_text="all")
    mano_dir: Path | None = option(
        None, "Real MANO files: converts DexYCB's PCA hand pose to the full 45-D hand_pose.", envvar="HOIGEN_MANO_DIR"
    )

    def __post_init__(self) -> None:
        validate(self)
