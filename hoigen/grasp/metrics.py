"""Grasp quality metrics stored in ``ann.json["grasp"]`` and ``index.parquet`` (``grasp_<name>``).

- ``penetration_depth_cm``: deepest hand vertex inside the object (0 when none is inside).
- ``contact_fingers``: fingertips within ``CONTACT_M`` of the surface (or inside it), out of 5.
- ``contact_ratio``: ``contact_fingers / 5``.
- ``tip_distance_cm``: mean distance of the five fingertips to the surface.
- ``approach_penetration_cm``: deepest penetration along the approach trajectory before its last
  ``APPROACH_FREE_FRAMES`` frames (the hand must not pass through the object on its way in).
"""

from __future__ import annotations

import numpy as np
import trimesh

from hoigen.objects.geometry import signed_distance

CONTACT_M = 0.005
APPROACH_FREE_FRAMES = 2
METRIC_NAMES = (
    "penetration_depth_cm",
    "contact_fingers",
    "contact_ratio",
    "tip_distance_cm",
    "approach_penetration_cm",
)


def penetration_cm(mesh: trimesh.Trimesh, points: np.ndarray) -> float:
    """Deepest of ``points`` inside ``mesh`` in centimetres (signed distance is positive inside)."""
    return float(max(signed_distance(mesh, points).max(), 0.0) * 100.0)


def grasp_metrics(mesh: trimesh.Trimesh, hand_vertices: np.ndarray, tips: np.ndarray) -> dict[str, float | int]:
    """Metrics of a final grasp: ``hand_vertices`` (V,3) and fingertips (5,3) in the mesh frame."""
    tip_sd = signed_distance(mesh, tips)
    touching = int(np.sum(tip_sd > -CONTACT_M))
    return {
        "penetration_depth_cm": round(penetration_cm(mesh, hand_vertices), 4),
        "contact_fingers": touching,
        "contact_ratio": round(touching / len(tips), 4),
        "tip_distance_cm": round(float(np.abs(tip_sd).mean() * 100.0), 4),
    }
