"""The DexYCB ingest options (declared once: CLI flags and the stage read these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hoigen.options import option, validate


@dataclass(frozen=True)
class IngestOptions:
    size: int | None = option(
        None, "Centre-crop to a square and scale to SIZE px (K and 2D joints follow).", min=8, default_text="640x480"
    )
    frame_step: int = option(1, "Keep every N-th frame.", min=1)
    subjects: list[str] | None = option(None, "Comma-separated subject folders.", split=",", default_text="all")
    serials: list[str] | None = option(None, "Comma-separated camera serials.", split=",", default_text="all")
    mano_dir: Path | None = option(
        None, "Real MANO files: converts DexYCB's PCA hand pose to the full 45-D hand_pose.", envvar="HOIGEN_MANO_DIR"
    )

    def __post_init__(self) -> None:
        validate(self)
