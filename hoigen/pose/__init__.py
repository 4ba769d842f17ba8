"""Category-level pose tools: Umeyama similarity fitting from NOCS maps and the NOCS metrics."""

from __future__ import annotations

from hoigen.pose.metrics import evaluate, iou_3d, rotation_error_deg, translation_error_cm
from hoigen.pose.umeyama import fit_nocs_pose, umeyama

__all__ = ["evaluate", "fit_nocs_pose", "iou_3d", "rotation_error_deg", "translation_error_cm", "umeyama"]
