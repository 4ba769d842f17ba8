"""Hand-made render-stage annotations for tests that feed synthesize without rendering."""

from __future__ import annotations

from typing import Any

import numpy as np


def render_ann(
    key: str, frame: int, frames: int, size: int, joints2d: Any = None, visible: int = 21, **hand: Any
) -> dict[str, Any]:
    """A contract-complete render ann.json with neutral values: identity poses, a ``size`` x ``size``
    pinhole camera, the object id taken from ``key`` (category mug); ``joints2d`` (21, 2) default
    zeros, the first ``visible`` joints visible; ``hand``: more hand fields (e.g. ``bbox``)."""
    eye = np.eye(4).tolist()
    joints = [[0.0] * 2] * 21 if joints2d is None else np.asarray(joints2d, dtype=np.float64).tolist()
    return {
        "key": key,
        "hand": {"side": "right", "model": "test-hand", "global_orient": [0.0] * 3, "hand_pose": [0.0] * 45,
                 "betas": [0.0] * 10, "transl": [0.0] * 3, "joints3d": [[0.0] * 3] * 21,
                 "joints2d": joints, "joints_visible": [i < visible for i in range(21)], **hand},
        "object": {"id": key.split("_")[0], "category": "mug", "mesh_sha256": "0" * 64, "pose": eye,
                   "nocs_from_mesh": eye},
        "camera": {"K": [[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], "world_to_cam": eye, "width": size,
                   "height": size},
        "trajectory": {"frame": frame, "frames": frames},
        "grasp": {},
    }  # fmt: skip
