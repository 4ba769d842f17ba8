"""The render stage's options (declared once: CLI flags, recipe keys and the stage read these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from hoigen.data.contract import MAX_DISTRACTORS
from hoigen.options import MAX_SIZE, REAL_SIZE, OptionError, option, validate

# "random" (a drawn field of view) or a real camera's intrinsics (hoigen.render.cameras.CAMERA_PRESETS)
CAMERA_CHOICES = ("random", "nocs-camera", "nocs-real275", "dexycb")
NORMALS_CHOICES = ("rendered", "estimated")  # estimated: hoigen.geometry.normals on the rendered depth
LIGHT_CHOICES = ("random", "fixed")  # hoigen.render.scene.sample_lights / DEFAULT_LIGHTS


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

    lights: str = option(
        "random",
        "shade.png lighting: random (1-3 directional lights with seeded directions and tints, fixed along a "
        "trajectory view) or fixed (one white light from the camera).",
        choices=LIGHT_CHOICES,
    )
    table: bool = option(
        True,
        "Stand the grasped object on a table (a 1.2 x 0.8 m box at the grasp's support height; depth and seg id 3). "
        "--no-table: the object floats in empty space (the scenes before tables).",
    )
    distractors: int = option(
        2,
        "Other objects standing on the table around the grasped object (from the grasp folder's other objects, "
        "else the embedded procedural library), clear of each other, the object and the hand's whole approach.",
        min=0,
        max=MAX_DISTRACTORS,
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.distractors and not self.table:
            raise OptionError("distractors", "needs the table (distractors stand on it); drop --no-table or pass 0")
