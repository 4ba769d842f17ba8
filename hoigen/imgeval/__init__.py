"""Image evaluation: image-label agreement (a hand detector against the labels) and distribution metrics.

- :mod:`hoigen.imgeval.agreement` — the detector interface and the per-image agreement row (PCK, handedness).
- :mod:`hoigen.imgeval.mediapipe_hands` — MediaPipe Hands as a detector (optional dependency, lazy import).
- :mod:`hoigen.imgeval.images` — ``hoigen eval images``: a stage folder -> ``eval.parquet`` + summary.
- :mod:`hoigen.imgeval.inception` / :mod:`hoigen.imgeval.fid` — FID and KID with user-supplied Inception weights.
- :mod:`hoigen.imgeval.clipscore` — CLIPScore with a user-supplied CLIP folder.
"""

from hoigen.imgeval.agreement import (
    MIN_VISIBLE_JOINTS,
    PCK_THRESHOLDS,
    Detection,
    Detector,
    agreement,
    summarize,
    verdict,
)

__all__ = ["MIN_VISIBLE_JOINTS", "PCK_THRESHOLDS", "Detection", "Detector", "agreement", "summarize", "verdict"]
