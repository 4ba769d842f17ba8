"""Units and size: the factor that turns a mesh file's coordinates into metres, and why.

Mesh files carry no unit. A file's size is judged by its largest bounding-box side ``E`` (in file
units). Given, first that applies: the mapping file's ``scale`` then ``unit`` for that object, then
``--scale F``, then ``--units m|cm|mm|in`` — the factor is used as given (no warning). Otherwise
(``--units auto``, the default) the units are judged:

1. A size *fits* a category when it lies in the hand-held range (``HAND_RANGE``, 3 cm to 60 cm) and
   within a factor 2 of the category's typical size (``TYPICAL_SIZE``; cited from the procedural
   builders' real-world ranges). For the catch-all category ``object`` any hand-held size fits
   metres, millimetres and centimetres (nothing else is known about it), while inches must be within
   a factor 2 of the typical 15 cm: inch files are rare, and a mesh normalised to 1-5 units would
   otherwise often read as a tiny object in inches.
2. The first unit that fits, in the order metres, millimetres, centimetres, inches (most to least
   common in mesh files), is taken; metres that fit are kept without a word.
3. When none fits (a 2.5-unit duck, a mesh normalised to unit size), the mesh is rescaled so its
   largest side is the category's typical size.

Every decision other than "metres fit" is one warning line with the original size, the factor and how
to override it. ``objects.parquet`` keeps the factor (``unit_scale``), where it came from
(``scale_from``) and the resulting size (``size_m``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hoigen.errors import HoigenError

UNIT_FACTORS = {"m": 1.0, "mm": 0.001, "cm": 0.01, "in": 0.0254}  # auto tries them in this order
UNIT_NAMES = {"m": "metres", "mm": "millimetres", "cm": "centimetres", "in": "inches"}
UNIT_CHOICES = ("auto", *UNIT_FACTORS)
HAND_RANGE = (0.03, 0.60)  # metres: largest side of objects a hand picks up, a few cm to ~60 cm
FIT_FACTOR = 2.0  # a unit fits when the size is within this factor of the category's typical size
# largest side in metres, the middle of the procedural builders' real-world ranges (hoigen.objects.procedural)
TYPICAL_SIZE = {
    "bottle": 0.22,
    "bowl": 0.15,
    "can": 0.12,
    "mug": 0.11,
    "camera": 0.12,
    "laptop": 0.33,
    "box": 0.15,
    "object": 0.15,
}
CATCH_ALL = "object"


@dataclass(frozen=True)
class ScaleChoice:
    """The factor to metres, where it came from (``auto m``, ``--units in``, ``mapping scale`` ...) and a warning."""

    factor: float
    source: str
    warning: str | None = None


def check_units(units: str, where: str = "--units") -> str:
    """``units`` if it is one of ``UNIT_CHOICES``, else a one-line error naming ``where``."""
    if units not in UNIT_CHOICES:
        raise HoigenError(f"{where}: unit {units!r} is not one of {', '.join(UNIT_CHOICES)}")
    return units


def check_scale(scale: float, where: str = "--scale") -> float:
    """``scale`` as a float if it is finite and positive, else a one-line error naming ``where``."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise HoigenError(f"{where}: scale {scale!r} is not a number; give a factor to metres, e.g. 0.001") from None
    if not math.isfinite(value) or value <= 0:
        raise HoigenError(f"{where}: scale must be a positive number (a factor to metres), got {scale!r}")
    return value


def typical_size(category: str) -> float:
    """The typical largest side (metres) of a category; unknown categories count as ``object``."""
    return TYPICAL_SIZE.get(category, TYPICAL_SIZE[CATCH_ALL])


def fits(size_m: float, category: str, unit: str) -> bool:
    """Whether a largest side of ``size_m`` metres is plausible for ``category`` read in ``unit``."""
    lo, hi = HAND_RANGE
    if not lo <= size_m <= hi:
        return False
    if category not in TYPICAL_SIZE or category == CATCH_ALL:
        if unit != "in":
            return True
    typical = typical_size(category)
    return typical / FIT_FACTOR <= size_m <= typical * FIT_FACTOR


def _cm(metres: float) -> str:
    return f"{metres * 100:.3g} cm"


def choose_scale(
    extent: float,
    category: str,
    *,
    name: str = "mesh",
    units: str = "auto",
    scale: float | None = None,
    mapping_unit: str | None = None,
    mapping_scale: float | None = None,
) -> ScaleChoice:
    """The factor to metres for a mesh whose largest side is ``extent`` file units (see the module)."""
    if mapping_scale is not None:
        return ScaleChoice(float(mapping_scale), "mapping scale")
    if mapping_unit is not None and mapping_unit != "auto":
        return ScaleChoice(UNIT_FACTORS[mapping_unit], f"mapping unit {mapping_unit}")
    if scale is not None:
        return ScaleChoice(float(scale), "--scale")
    if units != "auto":
        return ScaleChoice(UNIT_FACTORS[units], f"--units {units}")
    override = "pass --units m|cm|mm|in or --scale F, or a unit/scale column in the mapping file"
    for unit, factor in UNIT_FACTORS.items():
        if fits(extent * factor, category, unit):
            if unit == "m":
                return ScaleChoice(1.0, "auto m")
            return ScaleChoice(
                factor,
                f"auto {unit}",
                f"{name}: largest side {extent:.4g} is not a hand-held {category} in metres; read as "
                f"{UNIT_NAMES[unit]}, scaled by {factor:g} to {_cm(extent * factor)}; {override} if that is wrong",
            )
    typical = typical_size(category)
    factor = typical / extent
    return ScaleChoice(
        factor,
        "auto typical size",
        f"{name}: largest side {extent:.4g} fits no unit (m, mm, cm, in) for a hand-held {category}; rescaled by "
        f"{factor:.4g} to the typical {_cm(typical)}; {override} to set it",
    )


SMALL_FOR_GRASPS = 0.05  # metres: below this the whole-hand grasps rarely get --min-contacts 3 fingers on it


def size_hint(size_m: float, source: str) -> str | None:
    """Why an object's size may keep a hand from grasping it (None when the size looks fine)."""
    lo, hi = HAND_RANGE
    if size_m > hi:
        return f"{_cm(size_m)} across is larger than a hand can hold (units: {source}); check --units/--scale"
    if size_m < lo:
        return f"{_cm(size_m)} across is smaller than a hand grasps (units: {source}); check --units/--scale"
    if size_m < SMALL_FOR_GRASPS:
        return (
            f"{_cm(size_m)} across is small for whole-hand grasps (units: {source}); try --min-contacts 2, "
            "or check --units/--scale"
        )
    if source == "auto typical size":
        return f"its size was guessed ({_cm(size_m)}); give --units/--scale if it is wrong"
    return None
