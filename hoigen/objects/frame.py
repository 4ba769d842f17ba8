"""The canonical object frame: metres, the object's up axis on +y (NOCS convention), then NOCS.

A source file may put its object's up axis anywhere: YCB and BOP models are z-up, glTF and hoigen
are y-up. ``upright_rotation(up)`` is the proper rotation that takes the source axis ``up`` to +y
(and keeps the frame right-handed); the loader applies it, with the unit scale, to the vertices and
records the product as ``ObjectAsset.mesh_from_source``. ``nocs_transform`` (in ``asset``) then
centres the upright mesh's bounding box and scales its diagonal to 1.
"""

from __future__ import annotations

import numpy as np

from hoigen.errors import HoigenError

# source up axis -> rotation (rows: new x, y, z in source coordinates) taking it to +y
_UP = {
    "+y": np.eye(3),
    "-y": np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]]),
    "+z": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # (x, y, z) -> (x, z, -y), as BOP <- hoigen
    "-z": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    "+x": np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]),
    "-x": np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
}
UP_AXES: tuple[str, ...] = tuple(_UP)


def parse_up(up: str) -> str:
    """Normalise ``"z"``, ``"+Z"``, ``"-y"`` ... to one of ``UP_AXES`` or raise a one-line error."""
    text = str(up).strip().lower()
    key = text if text[:1] in "+-" else "+" + text
    if key not in _UP:
        raise HoigenError(f"up axis {up!r} is not one of {', '.join(UP_AXES)}; give the axis that points up")
    return key


def upright_rotation(up: str) -> np.ndarray:
    """3x3 rotation taking the source axis ``up`` to +y."""
    return _UP[parse_up(up)].copy()


def mesh_from_source(up: str, scale: float) -> np.ndarray:
    """4x4 ``scale * upright_rotation(up)``: source file coordinates -> hoigen mesh frame."""
    m = np.eye(4)
    m[:3, :3] = float(scale) * upright_rotation(up)
    return m
