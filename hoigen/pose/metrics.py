"""The NOCS evaluation metrics: 3D IoU at 25/50 % and the n°m cm pose thresholds, as mAP in percent.

Definitions follow the NOCS release's evaluation (Wang et al., CVPR 2019):

- An instance is (class, R, t, s, size): ``p_cam = s R p_nocs + t`` with t in metres, s the length
  of the object's bounding-box diagonal in metres, ``size`` the box extents in NOCS units.
- **3D IoU**: the 8 corners of the NOCS box (+-size/2) are mapped by each pose into the camera
  frame; the IoU is that of the two axis-aligned boxes around them (the release's definition).
- **Rotation error** (degrees): the angle of R1 R2^T; for classes symmetric about their y axis
  (bottle, bowl, can, and a mug whose handle is hidden) the angle between the two y axes.
  Symmetric classes take the best 3D IoU over 20 rotations about y.
- **Translation error** (cm): |t1 - t2| * 100.
- **AP**: per class, predictions in descending score order are matched greedily to unmatched
  ground truth of the same class (the candidate with the best IoU, or the smallest error that
  passes); precision/recall over all images give an all-point interpolated AP; mAP is the mean
  over classes that have ground truth. Pose thresholds only accept pairs whose 3D IoU exceeds 0.1,
  as the release matches on IoU before checking pose. A threshold passes when error <= it (+1e-4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

SYMMETRIC_CLASSES = ("bottle", "bowl", "can")
IOU_THRESHOLDS = {"iou25": 0.25, "iou50": 0.5}
POSE_THRESHOLDS = {"5deg2cm": (5, 2), "5deg5cm": (5, 5), "10deg2cm": (10, 2), "10deg5cm": (10, 5)}
IOU_POSE_GATE = 0.1
_EPS = 1e-4  # degrees, cm, IoU: absorbs the rounding of values stored in JSON


def is_symmetric(cls: str, handle_visible: bool = True) -> bool:
    return cls in SYMMETRIC_CLASSES or (cls == "mug" and not handle_visible)


def rotation_error_deg(R1: np.ndarray, R2: np.ndarray, cls: str = "", handle_visible: bool = True) -> float:
    R1, R2 = np.asarray(R1, np.float64), np.asarray(R2, np.float64)
    if is_symmetric(cls, handle_visible):
        c = float(R1[:, 1] @ R2[:, 1] / (np.linalg.norm(R1[:, 1]) * np.linalg.norm(R2[:, 1])))
    else:
        c = (float(np.trace(R1 @ R2.T)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def translation_error_cm(t1: np.ndarray, t2: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(t1, np.float64) - np.asarray(t2, np.float64)) * 100.0)


def _box_corners(size: np.ndarray) -> np.ndarray:
    h = np.asarray(size, np.float64) / 2.0
    return np.array([[x, y, z] for x in (-h[0], h[0]) for y in (-h[1], h[1]) for z in (-h[2], h[2])])


def _aabb_iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a.min(0), b.min(0)), np.minimum(a.max(0), b.max(0))
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    union = float(np.prod(a.max(0) - a.min(0)) + np.prod(b.max(0) - b.min(0))) - inter
    return inter / union if union > 0 else 0.0


def _rot_y(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def iou_3d(a: dict[str, Any], b: dict[str, Any]) -> float:
    """3D IoU of two instances (dicts with R, t, s, size, class)."""

    def corners(inst: dict[str, Any], spin: np.ndarray) -> np.ndarray:
        R = np.asarray(inst["R"], np.float64) @ spin
        return float(inst["s"]) * _box_corners(inst["size"]) @ R.T + np.asarray(inst["t"], np.float64)

    cb = corners(b, np.eye(3))
    if a["class"] == b["class"] and is_symmetric(a["class"], bool(b.get("handle_visible", True))):
        return max(_aabb_iou(corners(a, _rot_y(2 * np.pi * i / 20)), cb) for i in range(20))
    return _aabb_iou(corners(a, np.eye(3)), cb)


def average_precision(scores: list[float], hits: list[bool], n_gt: int) -> float:
    """All-point interpolated AP of predictions (score, true positive?) against ``n_gt`` targets."""
    if n_gt == 0:
        return float("nan")
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.asarray(hits, float)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = np.concatenate([[0.0], ctp / n_gt, [1.0]])
    precision = np.concatenate([[0.0], ctp / np.maximum(ctp + cfp, 1e-12), [0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


Criterion = Callable[[dict[str, Any], dict[str, Any]], "float | None"]


def _criteria() -> dict[str, Criterion]:
    """Per metric: the pair's cost (lower is better) when it passes, else None."""
    out: dict[str, Criterion] = {}
    for name, thr in IOU_THRESHOLDS.items():
        out[name] = lambda p, g, thr=thr: (lambda v: -v if v >= thr - _EPS else None)(iou_3d(p, g))
    for name, (deg, cm) in POSE_THRESHOLDS.items():

        def pose(p: dict[str, Any], g: dict[str, Any], deg: float = deg, cm: float = cm) -> float | None:
            if iou_3d(p, g) <= IOU_POSE_GATE:
                return None
            r = rotation_error_deg(p["R"], g["R"], g["class"], bool(g.get("handle_visible", True)))
            t = translation_error_cm(p["t"], g["t"])
            return r / deg + t / cm if r <= deg + _EPS and t <= cm + _EPS else None

        out[name] = pose
    return out


def evaluate(pred: dict[str, list[dict]], gt: dict[str, list[dict]]) -> dict[str, Any]:
    """mAP in percent per metric and per class, from {image: [instance, ...]} predictions and ground truth."""
    classes = sorted({g["class"] for insts in gt.values() for g in insts})
    result: dict[str, Any] = {"images": len(gt), "instances": sum(map(len, gt.values())), "per_class": {}}
    for name, crit in _criteria().items():
        aps = {}
        for cls in classes:
            scores: list[float] = []
            hits: list[bool] = []
            n_gt = 0
            for image, gts in gt.items():
                g_cls = [g for g in gts if g["class"] == cls]
                n_gt += len(g_cls)
                p_cls = sorted(
                    (p for p in pred.get(image, []) if p["class"] == cls), key=lambda p: -float(p.get("score", 1.0))
                )
                used = [False] * len(g_cls)
                for p in p_cls:
                    costs = [None if used[j] else crit(p, g) for j, g in enumerate(g_cls)]
                    ok = [(c, j) for j, c in enumerate(costs) if c is not None]
                    if ok:
                        used[min(ok)[1]] = True
                    scores.append(float(p.get("score", 1.0)))
                    hits.append(bool(ok))
            aps[cls] = 100.0 * average_precision(scores, hits, n_gt)
            result["per_class"].setdefault(cls, {})[name] = round(aps[cls], 4)
        result[name] = round(float(np.mean(list(aps.values()))), 4) if aps else float("nan")
    return result
