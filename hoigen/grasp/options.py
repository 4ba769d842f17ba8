"""The grasp stage's options (declared once: CLI flags, recipe keys and the stage read these fields)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hoigen.options import OptionError, option, validate

HAND_SIDES = ("right", "left")
HANDS = (*HAND_SIDES, "both")  # --hands: one side, or each grasp's side drawn from a derived seed
# --units: auto, then hoigen.objects.units.UNIT_FACTORS's order (options import no object code; a test pins the two)
MESH_UNITS = ("auto", "m", "mm", "cm", "in")


@dataclass(frozen=True)
class GraspOptions:
    objects: Path | None = option(
        None,
        "Folder of meshes (.obj/.ply/.glb/.stl/.urdf, YCB layout) or one such file. "
        "Default: the embedded procedural objects.",
    )
    categories: list[str] | None = option(
        None, "Procedural categories, e.g. mug,bowl.", split=",", default_text="bottle,bowl,can,mug"
    )
    category: str | None = option(None, "Category for every mesh in --objects.")
    up: str | None = option(
        None, "Up axis of the --objects meshes (+x/-x/+y/-y/+z/-z).", default_text="+z (glTF files: +y)"
    )
    units: str = option(
        "auto", "Unit of the --objects meshes: auto (judged from size and category), m, cm, mm or in.",
        choices=MESH_UNITS,
    )
    scale: float | None = option(None, "Factor to metres for every --objects mesh (e.g. 0.001); beats --units.")
    grasps: int = option(2, "Grasps per object.", min=1)
    frames: int = option(8, "Frames of each approach trajectory (the paper uses 8).", min=1)
    hands: str = option(
        "right", "Hand side: right, left, or both (each grasp's side drawn from a seed of its object and number).",
        choices=HANDS,
    )
    side: str | None = option(None, "Deprecated name of hands (recipes written before --hands).", choices=HAND_SIDES,
                              cli=False)  # fmt: skip
    table: bool = option(
        True, "The object stands upright on a table (turned about the vertical only), and grasps and approaches "
        "stay above it; --no-table: a floating object, as before.",
    )  # fmt: skip
    table_height: float = option(0.0, "World height (y, metres) of the table top.", min=-10, max=10, cli=False)
    lift: float = option(
        0.0, "Metres the hand lifts the object after the grasp, in --lift-frames frames appended to each "
        "trajectory (0: no lift).", min=0, max=1,
    )  # fmt: skip
    lift_frames: int = option(3, "Frames appended to each trajectory while the hand lifts the object (with --lift).",
                              min=1)  # fmt: skip
    mano_dir: Path | None = option(
        None, "Folder with MANO_RIGHT.pkl/MANO_LEFT.pkl.", envvar="HOIGEN_MANO_DIR", default_text="embedded hand"
    )
    objects_per_shard: int = option(1, "Objects per grasp shard.", min=1, cli=False)
    approach_distance: float = option(
        0.3, "Metres from the grasp to the approach's start pose (as the original code).", cli=False
    )
    max_penetration: float = option(
        0.5, "Accept grasps whose deepest hand vertex is at most this deep (cm).", min=0
    )
    max_sim_displacement: float = option(
        2.0, "Accept grasps whose object moves at most this far in the pybullet hold test (cm).", min=0
    )
    min_contacts: int = option(3, "Accept grasps with at least this many fingers touching.", min=0, max=5)
    candidates: int | None = option(
        None, "Optimised grasp candidates per object and round.", min=1, default_text="max(16, 3 x grasps)"
    )
    max_rounds: int = option(
        3, "Rounds of candidates per object while fewer than --grasps pass the filters.", min=1
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.side is not None:  # the deprecated key: moved to hands (so the run's record shows hands)
            if self.hands not in ("right", self.side):
                raise OptionError("side", f"is the old name of hands; give only hands (got side {self.side!r} "
                                  f"and hands {self.hands!r})")  # fmt: skip
            object.__setattr__(self, "hands", self.side)
            object.__setattr__(self, "side", None)
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise OptionError("scale", f"must be a positive number (a factor to metres), got {self.scale}")
