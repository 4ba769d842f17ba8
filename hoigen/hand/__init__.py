"""The hand layer: MANO through ``smplx`` (real files or the embedded stand-in), the 21 keypoints,
and the anatomical joint limits (:class:`JointSpace`)."""

from __future__ import annotations

from hoigen.hand.embedded import EMBEDDED_HAND_NAME, build_hand_files
from hoigen.hand.keypoints import HAND_BONES, HAND_JOINT_NAMES, joints21_from_mano
from hoigen.hand.limits import LIMITS_DEG, JointSpace
from hoigen.hand.model import (
    REAL_MANO_NAME,
    HandModel,
    HandOutput,
    curl_pose,
    load_hand,
    load_mano_pickle,
)

__all__ = [
    "EMBEDDED_HAND_NAME",
    "HAND_BONES",
    "HAND_JOINT_NAMES",
    "REAL_MANO_NAME",
    "HandModel",
    "HandOutput",
    "JointSpace",
    "LIMITS_DEG",
    "build_hand_files",
    "curl_pose",
    "joints21_from_mano",
    "load_hand",
    "load_mano_pickle",
]
