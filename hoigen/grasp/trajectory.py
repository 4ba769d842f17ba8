"""Hand poses as rigid placement + articulation, and the approach trajectory to a grasp.

As in the paper (section 3.2) the trajectory starts from an open, flat hand placed above the
contact surface (``distance`` metres along the approach direction) and reaches the grasp by
spherical linear interpolation: of the global rotation and of each of the 15 joint rotations
(as quaternions), with the translation interpolated linearly.

:func:`approach_penetration_cm` checks that the hand does not pass through the object on its way
in: the deepest penetration of any vertex in the frames before the last ``APPROACH_FREE_FRAMES``.

With a table (a plane y = height under the object), the approach direction is turned up to rise at
least :data:`MIN_APPROACH_ELEVATION_DEG` (:func:`approach_from_above`) and any approach frame whose
hand would reach below the plane is raised until it clears it by :data:`TABLE_GAP`
(:func:`clearance_rise`). After the grasp, optional lift frames move hand and object up together
(:func:`lift_offsets`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

APPROACH_FREE_FRAMES = 2  # the last frames may touch the object (the grasp closes there)
MIN_APPROACH_ELEVATION_DEG = 20.0  # with a table, an approach starts at least this steeply above the grasp
TABLE_GAP = 0.002  # with a table, approach frames keep every hand vertex this far (m) above it


@dataclass
class HandPose:
    """A hand placed in the world: ``v_world = rotation @ v_canonical + translation``.

    ``v_canonical`` is the hand with zero global orientation and zero translation; ``hand_pose`` is
    MANO's full 45-D axis-angle articulation and ``betas`` its shape.
    """

    rotation: np.ndarray
    translation: np.ndarray
    hand_pose: np.ndarray
    betas: np.ndarray

    def mano_params(self, hand) -> dict[str, np.ndarray]:
        """MANO parameters (global_orient, hand_pose, betas, transl) for ``hand`` (a HandModel)."""
        orient, transl = hand.params_for_rigid(self.rotation, self.translation, betas=self.betas)
        return {
            "global_orient": np.asarray(orient, np.float64),
            "hand_pose": np.asarray(self.hand_pose, np.float64),
            "betas": np.asarray(self.betas, np.float64),
            "transl": np.asarray(transl, np.float64),
        }

    def transformed(self, pose: np.ndarray) -> HandPose:
        """This hand moved by a rigid 4x4 ``pose`` (e.g. object mesh frame -> world)."""
        return replace(
            self, rotation=pose[:3, :3] @ self.rotation, translation=pose[:3, :3] @ self.translation + pose[:3, 3]
        )


def slerp_rotations(start: np.ndarray, end: np.ndarray, ts: np.ndarray) -> Rotation:
    """Rotations at times ``ts`` in [0, 1] on the shortest arc between two rotations."""
    keys = Rotation.concatenate(
        [
            Rotation.from_matrix(start) if np.ndim(start) == 2 else Rotation.from_rotvec(start),
            Rotation.from_matrix(end) if np.ndim(end) == 2 else Rotation.from_rotvec(end),
        ]
    )
    return Slerp([0.0, 1.0], keys)(ts)


def approach_trajectory(
    grasp: HandPose,
    approach_dir: np.ndarray,
    frames: int,
    distance: float = 0.3,
    start_rotation: np.ndarray | None = None,
) -> list[HandPose]:
    """``frames`` poses from a flat hand ``distance`` m along ``approach_dir`` to ``grasp`` (last frame).

    ``start_rotation`` (3x3) is the open hand's orientation at the start (default: the grasp's).
    """
    if frames < 1:
        raise ValueError("a trajectory needs at least one frame")
    ts = np.linspace(0.0, 1.0, frames) if frames > 1 else np.ones(1)
    direction = np.asarray(approach_dir, np.float64) / np.linalg.norm(approach_dir)
    start_t = grasp.translation + distance * direction
    joints_end = np.asarray(grasp.hand_pose, np.float64).reshape(15, 3)
    per_joint = [slerp_rotations(np.zeros(3), joints_end[j], ts).as_rotvec() for j in range(15)]
    poses = np.stack(per_joint, axis=1).reshape(len(ts), 45)
    start_r = grasp.rotation if start_rotation is None else start_rotation
    rotations = slerp_rotations(start_r, grasp.rotation, ts).as_matrix()
    return [
        HandPose(
            rotation=rotations[i],
            translation=(1 - t) * start_t + t * grasp.translation,
            hand_pose=poses[i],
            betas=np.asarray(grasp.betas),
        )
        for i, t in enumerate(ts)
    ]


def approach_from_above(direction: np.ndarray, min_elevation_deg: float = MIN_APPROACH_ELEVATION_DEG) -> np.ndarray:
    """``direction`` (world, y up) turned up in its vertical plane to at least ``min_elevation_deg``
    above the horizontal (unchanged when it already rises that steeply), unit length.

    With a table, an approach along a surface normal that points sideways or down would start at or
    under the table; this keeps the start above it. A straight-down direction becomes straight up."""
    d = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    low = np.sin(np.deg2rad(min_elevation_deg))
    if d[1] >= low:
        return d
    flat = np.array([d[0], 0.0, d[2]])
    norm = np.linalg.norm(flat)
    if norm < 1e-9:
        return np.array([0.0, 1.0, 0.0])
    return flat / norm * np.sqrt(1.0 - low**2) + np.array([0.0, low, 0.0])


def clearance_rise(lowest: np.ndarray, height: float, gap: float = TABLE_GAP, keep_last: bool = True) -> np.ndarray:
    """Upward shifts (F,) that put each frame's ``lowest`` hand point (F,) at least ``gap`` above
    ``height``; the last frame (the grasp, already checked against the table) is kept where it is
    when ``keep_last``."""
    rise = np.maximum(0.0, height + gap - np.asarray(lowest, np.float64))
    if keep_last and len(rise):
        rise[-1] = 0.0
    return rise


def lift_offsets(distance: float, frames: int) -> np.ndarray:
    """Heights (frames,) of the lift frames after the grasp: ``distance`` reached at the last, in equal steps."""
    return distance * np.arange(1, frames + 1, dtype=np.float64) / max(frames, 1)


def approach_penetration_cm(frame_vertices: np.ndarray, evaluator, free_frames: int = APPROACH_FREE_FRAMES) -> float:
    """Deepest penetration (cm) of the hand into the object in the frames before the last ``free_frames``.

    ``frame_vertices`` (F, V, 3) are in the object's mesh frame; ``evaluator`` is a
    :class:`hoigen.grasp.metrics.GraspEvaluator` of that object (its ``exact_signed``).
    """
    early = np.asarray(frame_vertices)[: max(0, len(frame_vertices) - free_frames)]
    if not len(early):
        return 0.0
    sd = evaluator.exact_signed(early.reshape(-1, 3))
    return round(float(max(sd.max(), 0.0) * 100.0), 4)
