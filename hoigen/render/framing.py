"""Choosing one camera for a whole trajectory, so that every frame of it is in view.

A video needs one camera per (object, grasp, view) for all frames. The render stage collects
sample points of every frame (object surface points under each object pose, hand vertices of each
frame) and draws cameras from one seeded generator per (object, grasp, view) until one sees all
points (:func:`frame_trajectory`). After ``tries`` draws it keeps the draw that saw the largest
share of points; if no draw saw any point, the trajectory's view is skipped (the caller logs why).
The points depend only on the trajectory, and the generator only on (seed, object, grasp, view),
so the choice is deterministic and the same for every frame of the trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hoigen.render.cameras import Camera, in_view


@dataclass
class Framing:
    """The chosen camera (None: nothing in view after every try), how many draws it took and the
    share of trajectory points it sees."""

    camera: Camera | None
    tries: int
    seen: float

    @property
    def reason(self) -> str:
        """Why the view was skipped (empty when a camera was chosen)."""
        if self.camera is not None:
            return ""
        return f"no camera of {self.tries} draws sees any point of the object or hand (out of view)"


def subsample(points: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``points`` (N,3), evenly strided (deterministic)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) <= count:
        return points
    return points[np.linspace(0, len(points) - 1, count).round().astype(np.int64)]


def frame_trajectory(
    sample: Callable[[np.ndarray, np.random.Generator], Camera],
    center: np.ndarray,
    points: np.ndarray,
    rng: np.random.Generator,
    tries: int = 10,
    znear: float = 0.01,
    zfar: float = 10.0,
) -> Framing:
    """Draw up to ``tries`` cameras ``sample(center, rng)``; keep the first that sees every point
    of ``points`` (N,3, world), else the one that sees the most, else none (see module docstring)."""
    best, best_seen, used = None, 0.0, 0
    while used < max(1, int(tries)):
        used += 1
        camera = sample(center, rng)
        seen = float(np.mean(in_view(points, camera, znear, zfar))) if len(points) else 0.0
        if seen > best_seen:
            best, best_seen = camera, seen
        if seen >= 1.0:
            break
    return Framing(best, used, best_seen)
