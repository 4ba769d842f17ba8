"""The render stage's options (declared once: CLI flags, recipe keys and the stage read these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from hoigen.options import MAX_SIZE, REAL_SIZE, option, validate

# "random" (a drawn field of view) or a real camera's intrinsics (hoigen.render.cameras.CAMERA_PRESETS)
CAMERA_CHOICES = ("random", "nocs-camera", "nocs-real275", "dexycb")
NORMALS_CHOICES = ("rendered", "estimated")  # estimated: hoigen.geometry.normals on the rendered depth


@dataclass(frozen=True)
class RenderOptions:
    views: int = option(2, "Cameras per trajectory, fixed along it.", min=1)
    size: int | None = option(
        None,
        "Square image side S in pixels. With a preset, S centre-crops the native frame to a square and scales it "
        "(K follows).",
        min=1,
        max=MAX_SIZE,
        default_text=f"{REAL_SIZE} with --camera random, the preset's native size (640x480) with a preset",
    )
    supersample: int = option(1, "Render N times larger and area-average the normal and shade maps.", min=1)
    camera: str = option(
        "random",
        "Intrinsics: random (fov 45-55 deg), nocs-camera, nocs-real275 or dexycb (real cameras' K).",
        choices=CAMERA_CHOICES,
    )
    camera_tries: int = option(
        10,
        "Camera draws per trajectory view until the hand is not hidden behind the object at the grasp frame; a "
        "view still without a usable camera is skipped, logged and counted in run.json (views_skipped).",
        min=1,
    )
    fill: float = option(
        0.5,
        "Share of the image's shorter side taken by the longer side of the grasp (end) frame's hand+object box; "
        "sets the camera distance (the camera aims at that box, fixed along the trajectory, so earlier approach "
        "frames may leave the image).",
        min=0.05,
        max=1.0,
    )

    normals: str = option(
        "rendered",
        "normal.png: rendered (the meshes' shading normals) or estimated (from the rendered depth, by the same "
        "function as DexYCB ingest; the original HOIDiffusion estimated normals from depth at training and synthesis).",
        choices=NORMALS_CHOICES,
    )

    def __post_init__(self) -> None:
        validate(self)
