"""Detectors by name, for the synthesize filter (``--filter-detector``): ``mediapipe`` or ``module:factory``."""

from __future__ import annotations

from hoigen.errors import HoigenError
from hoigen.imgeval.agreement import Detector

MEDIAPIPE = "mediapipe"


def load_detector(spec: str, flag: str = "--filter-detector") -> Detector:
    """A detector: ``mediapipe`` (MediaPipe Hands, imported only now) or ``module:factory``, a callable
    returning a detector (``image -> list[Detection]``; give it a ``name`` attribute to have it recorded).

    ``module:factory`` runs user code by design (like ``--caption-hook``): name only modules you would run."""
    if spec == MEDIAPIPE:
        from hoigen.imgeval.mediapipe_hands import MediaPipeHands

        return MediaPipeHands()
    from hoigen.trust import load_user_callable

    factory = load_user_callable(spec, flag, "mediapipe, or module:factory (e.g. mydetector:make)")
    name = spec.partition(":")[2]
    detector = factory()
    if not callable(detector):
        raise HoigenError(f"{flag} {spec!r}: {name}() returned {type(detector).__name__}, not a detector")
    return detector


def detector_name(detector: Detector, spec: str) -> str:
    """What gen.json records as the detector: its ``name`` attribute, else the spec it was loaded from."""
    return str(getattr(detector, "name", None) or spec)
