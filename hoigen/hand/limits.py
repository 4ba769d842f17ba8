"""Anatomical joint limits of the 15 MANO finger joints and the joint space that uses them.

MANO poses each finger joint with an axis-angle vector in the rest frame. Anatomy speaks of
*flexion* (curling toward the palm), *abduction* (sideways, in the palm plane) and *twist* (about
the bone). :class:`JointSpace` computes, from a hand model's own rest joints, one orthonormal frame
per joint (flexion axis, abduction axis, twist axis = bone direction), so that

    MANO axis-angle of joint j = flex_j * flexion_axis_j + abd_j * abduction_axis_j + twist_j * twist_axis_j

(a linear map per joint, exact inverse by projection). Sign conventions, the same for both sides:

- flexion > 0 curls the finger toward the palm (for the thumb: across the palm, toward the pinky);
- abduction > 0 turns the finger toward the thumb side (radial); for the thumb, away from the palm;
- twist > 0 is a right-handed turn about the bone on the right hand, mirrored on the left.

Because the frames are built with cross products from the rest joints (and a side sign for the
abduction and twist axes), a left hand's angles mean what a right hand's mean: mirroring a pose as
``(ax, -ay, -az)`` leaves its anatomical angles unchanged. The frames work for real MANO and the
embedded hand alike.

The limits table (:data:`LIMITS_DEG`) is in degrees, relative to MANO's flat rest hand. Sources:
- finger flexion/extension: American Academy of Orthopaedic Surgeons, *Joint Motion: Method of
  Measuring and Recording* (1965): MCP 0-90 (extension ~20 passive), PIP 0-100, DIP 0-90
  (extension ~10); Hume et al., "Functional range of motion of the joints of the hand",
  J Hand Surg Am 15(2):240-243, 1990 (active MCP ~100, PIP ~105, DIP ~85);
- finger MCP abduction +-15..20 and the PIP/DIP hinge (0 abduction): Lin, Wu and Huang, "Modeling
  the constraints of human hand motion", IEEE Workshop on Human Motion, 2000 (MCP 0-90, PIP 0-110,
  DIP 0-90, MCP abduction -15..15);
- thumb: AAOS (1965): CMC palmar abduction 0-70, flexion 15 / extension 20, MCP flexion 0-50,
  IP flexion 0-80 with ~20 hyperextension; Cooney et al., "The kinesiology of the thumb
  trapeziometacarpal joint", J Bone Joint Surg Am 63(9), 1981 (CMC axial rotation ~ +-20).
PIP/DIP abduction and twist are given a few degrees of play so optimisers have room (real joints
have some passive laxity) but stay close to pure hinges.
"""

from __future__ import annotations

import numpy as np

from hoigen.hand.keypoints import FINGERS, MANO_JOINT_NAMES, joint_index

# (flexion min, max), (abduction min, max), (twist min, max) in degrees, per finger joint 1..3.
_FINGER_LIMITS_DEG = {
    1: ((-25.0, 90.0), (-20.0, 20.0), (-10.0, 10.0)),  # MCP
    2: ((-5.0, 110.0), (-5.0, 5.0), (-5.0, 5.0)),  # PIP
    3: ((-10.0, 90.0), (-5.0, 5.0), (-5.0, 5.0)),  # DIP
}
_THUMB_LIMITS_DEG = {
    1: ((-20.0, 55.0), (-25.0, 45.0), (-25.0, 25.0)),  # CMC (trapeziometacarpal), from MANO's rest
    2: ((-10.0, 60.0), (-10.0, 10.0), (-10.0, 10.0)),  # MCP
    3: ((-20.0, 85.0), (-5.0, 5.0), (-5.0, 5.0)),  # IP
}


def _limits_table() -> np.ndarray:
    table = np.zeros((15, 3, 2))
    for m, name in enumerate(MANO_JOINT_NAMES[1:]):
        finger, part = name[:-1], int(name[-1])
        table[m] = (_THUMB_LIMITS_DEG if finger == "thumb" else _FINGER_LIMITS_DEG)[part]
    return table


# (15, 3, 2) degrees, rows in MANO's joint order (index1..3, middle1..3, pinky1..3, ring1..3,
# thumb1..3), columns (flexion, abduction, twist), last axis (min, max).
LIMITS_DEG: np.ndarray = _limits_table()

# Convenience poses in degrees of (flexion) per joint 1..3: an open hand and a closed fist.
_OPEN_FLEX_DEG = {"thumb": (0.0, 0.0, 0.0), "finger": (5.0, 8.0, 4.0)}
_FIST_FLEX_DEG = {
    "thumb": (10.0, 32.0, 60.0),
    "index": (77.0, 95.0, 60.0),
    "middle": (80.0, 95.0, 60.0),
    "ring": (80.0, 95.0, 60.0),
    "pinky": (83.0, 92.0, 57.0),
}
_FIST_THUMB_CMC_DEG = (5.0, 5.0)  # abduction, twist of the thumb's base in the fist


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class JointSpace:
    """Anatomical angles <-> MANO axis-angle for one hand model (see the module docstring).

    ``axes`` is (15, 3, 3): for each MANO finger joint, rows (flexion axis, abduction axis, twist
    axis), orthonormal, in the rest frame. ``lower``/``upper`` are (15, 3) radians.
    """

    def __init__(self, axes: np.ndarray, side: str, limits_deg: np.ndarray = LIMITS_DEG) -> None:
        self.axes = np.asarray(axes, dtype=np.float64).reshape(15, 3, 3)
        self.side = side
        self.lower = np.deg2rad(limits_deg[..., 0])
        self.upper = np.deg2rad(limits_deg[..., 1])

    @classmethod
    def from_hand(cls, hand) -> JointSpace:
        """The joint space of a :class:`~hoigen.hand.model.HandModel` (its flat rest joints)."""
        return cls.from_rest_joints(hand.rest_joints(), hand.side)

    @classmethod
    def from_rest_joints(cls, joints21: np.ndarray, side: str) -> JointSpace:
        """The joint space from rest joints (21, 3) in the common order, for ``side``."""
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', not {side!r}")
        j = np.asarray(joints21, dtype=np.float64)
        s = 1.0 if side == "right" else -1.0
        forward = _unit(j[joint_index("middle1")] - j[0])
        lateral = j[joint_index("index1")] - j[joint_index("pinky1")]
        lateral = _unit(lateral - forward * (lateral @ forward))  # toward the thumb
        normal = s * np.cross(lateral, forward)  # the direction the palm faces
        axes = np.zeros((15, 3, 3))
        for m, name in enumerate(MANO_JOINT_NAMES[1:]):
            i = joint_index(name)
            d = _unit(j[i + 1] - j[i])  # the bone from this joint to its child (or the tip)
            toward = normal - 2.0 * lateral if name.startswith("thumb") else normal
            palmar = _unit(toward - d * (toward @ d))
            flex = _unit(np.cross(d, palmar))  # rotating d about it moves d toward ``palmar``
            abd = -s * palmar  # right hand: a turn about -palmar moves d toward d x palmar
            axes[m] = np.stack([flex, abd, s * d])
        return cls(axes, side)

    # -- maps ------------------------------------------------------------------------------------------

    def to_pose(self, angles):
        """(B, 15, 3) or (15, 3) angles (flexion, abduction, twist; radians) -> (B, 45) / (45,) MANO
        hand_pose axis-angle. numpy in, numpy out; torch in, torch out (differentiable)."""
        if _is_torch(angles):
            import torch

            axes = torch.as_tensor(self.axes, dtype=angles.dtype, device=angles.device)
            pose = torch.einsum("...jk,jkc->...jc", angles, axes)
            return pose.reshape(*angles.shape[:-2], 45)
        a = np.asarray(angles, dtype=np.float64)
        return np.einsum("...jk,jkc->...jc", a, self.axes).reshape(*a.shape[:-2], 45)

    def from_pose(self, hand_pose):
        """(B, 45) or (45,) MANO hand_pose -> (B, 15, 3) / (15, 3) anatomical angles (inverse of
        :meth:`to_pose`; the projection onto each joint's axes)."""
        if _is_torch(hand_pose):
            import torch

            axes = torch.as_tensor(self.axes, dtype=hand_pose.dtype, device=hand_pose.device)
            p = hand_pose.reshape(*hand_pose.shape[:-1], 15, 3)
            return torch.einsum("...jc,jkc->...jk", p, axes)
        p = np.asarray(hand_pose, dtype=np.float64)
        p = p.reshape(*p.shape[:-1], 15, 3)
        return np.einsum("...jc,jkc->...jk", p, self.axes)

    # -- limits ----------------------------------------------------------------------------------------

    def clamp(self, angles):
        """Angles clipped into [lower, upper] (numpy or torch)."""
        if _is_torch(angles):
            import torch

            lo = torch.as_tensor(self.lower, dtype=angles.dtype, device=angles.device)
            hi = torch.as_tensor(self.upper, dtype=angles.dtype, device=angles.device)
            return torch.maximum(torch.minimum(angles, hi), lo)
        return np.clip(np.asarray(angles, dtype=np.float64), self.lower, self.upper)

    def violation(self, angles):
        """Penalty per batch item: the sum of squared excess beyond the limits (radians^2).

        (B, 15, 3) -> (B,); (15, 3) -> scalar. Differentiable on torch tensors."""
        if _is_torch(angles):
            import torch

            lo = torch.as_tensor(self.lower, dtype=angles.dtype, device=angles.device)
            hi = torch.as_tensor(self.upper, dtype=angles.dtype, device=angles.device)
            excess = torch.relu(lo - angles) + torch.relu(angles - hi)
            return (excess**2).sum(dim=(-2, -1))
        a = np.asarray(angles, dtype=np.float64)
        excess = np.maximum(self.lower - a, 0.0) + np.maximum(a - self.upper, 0.0)
        return (excess**2).sum(axis=(-2, -1))

    # -- convenience poses -----------------------------------------------------------------------------

    def open_angles(self) -> np.ndarray:
        """(15, 3) radians: a relaxed, slightly open hand (fingers a little flexed, thumb at rest)."""
        return self._flex_angles(lambda finger: _OPEN_FLEX_DEG["thumb" if finger == "thumb" else "finger"])

    def fist_angles(self) -> np.ndarray:
        """(15, 3) radians: a closed fist within the limits, the thumb across the index and middle."""
        angles = self._flex_angles(lambda finger: _FIST_FLEX_DEG[finger])
        angles[finger_joint_rows("thumb")[0], 1:] = np.deg2rad(_FIST_THUMB_CMC_DEG)
        return angles

    def _flex_angles(self, flex_of) -> np.ndarray:
        angles = np.zeros((15, 3))
        for m, name in enumerate(MANO_JOINT_NAMES[1:]):
            angles[m, 0] = np.deg2rad(flex_of(name[:-1])[int(name[-1]) - 1])
        return angles


def finger_joint_rows(finger: str) -> list[int]:
    """Rows (0..14) of ``finger``'s joints 1..3 in the (15, ...) MANO finger-joint order."""
    if finger not in FINGERS:
        raise ValueError(f"finger must be one of {FINGERS}, not {finger!r}")
    return [MANO_JOINT_NAMES.index(f"{finger}{i}") - 1 for i in (1, 2, 3)]


__all__ = ["LIMITS_DEG", "JointSpace", "finger_joint_rows"]
