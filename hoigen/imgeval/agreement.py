"""Image-label agreement: does an image show the hand its labels describe?

A *detector* is any callable ``image (H, W, 3) uint8 RGB -> list[Detection]``; the real one is
:class:`hoigen.imgeval.mediapipe_hands.MediaPipeHands`, tests and filters can pass a fake. Each
detection holds 21 landmarks in pixels, in hoigen's joint order (wrist, then thumb, index, middle,
ring, pinky, each from base to tip; MediaPipe and OpenPose use the same order), and the hand's side
as seen in an *unmirrored* image.

:func:`agreement` compares one image with its ``ann.json``: detected or not, handedness against
``hand.side``, PCK at 0.05/0.1/0.2 of the labelled hand box diagonal over the labelled visible
joints (``hand.joints2d``, ``hand.joints_visible``), and the mean pixel error over those joints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: Handedness counted as "confident" at or above this side score (see ``handedness_agreement_confident``).
CONFIDENT_SIDE = 0.9
#: PCK thresholds, as fractions of the labelled hand box diagonal.
PCK_THRESHOLDS: tuple[float, ...] = (0.05, 0.1, 0.2)
NUM_JOINTS = 21


@dataclass(frozen=True)
class Detection:
    """One detected hand: ``joints`` (21, 2) pixels (x right, y down), ``side`` "right"/"left"/None and
    ``side_score``, the detector's confidence in that side (NaN when it gives none)."""

    joints: np.ndarray
    side: str | None = None
    side_score: float = float("nan")


class Detector(Protocol):
    """Anything that finds hands in an RGB uint8 image (H, W, 3)."""

    def __call__(self, image: np.ndarray) -> list[Detection]: ...


def pck_name(threshold: float) -> str:
    """The column/summary name of a PCK threshold: ``pck@0.05``, ``pck@0.1``, ``pck@0.2``."""
    return f"pck@{threshold:g}"


def hand_box(ann: dict[str, Any]) -> list[float] | None:
    """The labelled hand box ``[x0, y0, x1, y1]``: ``hand.bbox`` (the whole hand's mask box, from render),
    else the box of the labelled 2D joints; None without either."""
    hand = ann.get("hand", {})
    box = hand.get("bbox")
    if box is not None and len(box) == 4:
        return [float(v) for v in box]
    joints = hand.get("joints2d")
    if not joints:
        return None
    pts = np.asarray(joints, dtype=np.float64).reshape(-1, 2)
    return [*pts.min(axis=0).tolist(), *pts.max(axis=0).tolist()]


def box_diagonal(box: Sequence[float]) -> float:
    return float(np.hypot(box[2] - box[0], box[3] - box[1]))


def labelled_joints(ann: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``hand.joints2d`` (21, 2) and ``hand.joints_visible`` (21,) bool (all True when absent)."""
    hand = ann.get("hand", {})
    joints = hand.get("joints2d")
    if joints is None:
        return np.zeros((0, 2)), np.zeros(0, dtype=bool)
    pts = np.asarray(joints, dtype=np.float64).reshape(-1, 2)
    visible = np.asarray(hand.get("joints_visible", [True] * len(pts)), dtype=bool).reshape(-1)
    if visible.shape[0] != pts.shape[0]:
        visible = np.ones(pts.shape[0], dtype=bool)
    return pts, visible


def joint_errors(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Pixel distances between predicted and labelled joints, over the visible ones only."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    return np.linalg.norm(pred[visible] - gt[visible], axis=1)


def pck(errors: np.ndarray, diagonal: float, threshold: float) -> float:
    """Fraction of joints whose error is at most ``threshold * diagonal`` (NaN without joints)."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0 or not diagonal > 0:
        return float("nan")
    return float(np.mean(errors <= threshold * diagonal))


def _closest(detections: Sequence[Detection], gt: np.ndarray, visible: np.ndarray) -> Detection:
    """The detection nearest the labelled hand (mean error over visible joints), else the most confident."""
    if visible.any():
        return min(detections, key=lambda d: float(np.mean(joint_errors(d.joints, gt, visible))))
    return detections[0]


def agreement(image: np.ndarray, ann: dict[str, Any], detector: Detector) -> dict[str, Any]:
    """Run ``detector`` on ``image`` and compare its best-matching hand with the labels in ``ann``.

    The row: ``detected``, ``detections`` (how many hands), ``side`` (labelled),
    ``side_pred``, ``side_score``, ``side_ok``, ``visible_joints``, ``box_diag_px``, ``pck@0.05``, ``pck@0.1``,
    ``pck@0.2`` and ``mean_error_px`` (NaN when nothing was detected or no joint is visible), and
    ``joints_pred`` (the matched hand's 21 landmarks in pixels, None when nothing was detected).
    """
    detections = list(detector(np.ascontiguousarray(image)))
    gt, visible = labelled_joints(ann)
    box = hand_box(ann)
    diagonal = box_diagonal(box) if box is not None else 0.0
    row: dict[str, Any] = {
        "detected": bool(detections),
        "detections": len(detections),
        "side": str(ann.get("hand", {}).get("side", "")),
        "side_pred": "",
        "side_score": float("nan"),
        "side_ok": None,
        "visible_joints": int(visible.sum()),
        "box_diag_px": round(diagonal, 4),
        **{pck_name(t): float("nan") for t in PCK_THRESHOLDS},
        "mean_error_px": float("nan"),
        "joints_pred": None,
    }
    if not detections:
        return row
    best = _closest(detections, gt, visible)
    joints = np.asarray(best.joints, dtype=np.float64).reshape(-1, 2)
    if joints.shape[0] != NUM_JOINTS:
        raise ValueError(f"detector returned {joints.shape[0]} landmarks, expected {NUM_JOINTS}")
    row["joints_pred"] = np.round(joints, 2).tolist()
    row["side_score"] = float(best.side_score)
    row["side_pred"] = best.side or ""
    row["side_ok"] = (best.side == row["side"]) if best.side and row["side"] else None
    if gt.shape[0] == NUM_JOINTS and visible.any():
        errors = joint_errors(joints, gt, visible)
        for t in PCK_THRESHOLDS:
            row[pck_name(t)] = pck(errors, diagonal, t)
        row["mean_error_px"] = float(errors.mean())
    return row


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over per-image rows. PCK, mean error and handedness agreement are over *detected* images only.

    ``detection_rate`` counts every image; ``detection_rate_hand_visible`` only images whose labels
    have at least one visible joint (a hand outside the frame or fully hidden cannot be found).
    ``handedness_agreement_confident`` counts only detections whose side score is at least
    :data:`CONFIDENT_SIDE` (``handedness_confident`` of them).
    """
    n = len(rows)
    detected = [r for r in rows if r["detected"]]
    with_hand = [r for r in rows if r["visible_joints"] > 0]
    sides = [r["side_ok"] for r in detected if r["side_ok"] is not None]
    confident = [r["side_ok"] for r in detected if r["side_ok"] is not None and r["side_score"] >= CONFIDENT_SIDE]
    out: dict[str, Any] = {
        "images": n,
        "detected": len(detected),
        "detection_rate": len(detected) / n if n else float("nan"),
        "images_hand_visible": len(with_hand),
        "detection_rate_hand_visible": (
            sum(r["detected"] for r in with_hand) / len(with_hand) if with_hand else float("nan")
        ),
        "handedness_agreement": float(np.mean(sides)) if sides else float("nan"),
        "handedness_confident": len(confident),
        "handedness_agreement_confident": float(np.mean(confident)) if confident else float("nan"),
    }
    for t in PCK_THRESHOLDS:
        out[pck_name(t)] = _nanmean([r[pck_name(t)] for r in detected])
    out["mean_error_px"] = _nanmean([r["mean_error_px"] for r in detected])
    out["pck_over"] = "detected images (PCK, mean error and handedness agreement ignore missed images)"
    return out


#: The labelled hand is "visible enough" to be judged when at least this many of its 21 joints are visible.
MIN_VISIBLE_JOINTS = 11
#: Verdicts of :func:`verdict`.
PASS, FAIL, UNJUDGED = "pass", "fail", "unjudged"


def verdict(row: dict[str, Any], min_pck: float, pck_at: float = 0.2,
            min_visible: int = MIN_VISIBLE_JOINTS) -> str:  # fmt: skip
    """Does an agreement row (:func:`agreement`) pass the filter ``PCK@pck_at >= min_pck``?

    The rule: a labelled hand with fewer than ``min_visible`` visible joints (hidden, or out of the
    frame) cannot be judged, so the image is :data:`UNJUDGED` (kept as it is, whatever was detected).
    Otherwise no detection is a :data:`FAIL`, and a detection passes when its PCK at ``pck_at`` (a
    fraction of the labelled hand box diagonal, over the visible joints) is at least ``min_pck``.
    """
    if row["visible_joints"] < min_visible:
        return UNJUDGED
    if not row["detected"]:
        return FAIL
    value = row[pck_name(pck_at)]
    return PASS if value == value and value >= min_pck else FAIL
