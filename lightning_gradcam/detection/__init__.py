"""torchvision detectors, per detection: :class:`DetectionCAM` (``explain.py``) over the
recovery of each detection's proposal row or anchor (``heads.py``)."""

from ..core.detections import Detection
from .explain import DETECTION_LAYER_HINT, DetectionCAM
from .heads import detector_family

__all__ = ["DetectionCAM", "Detection", "DETECTION_LAYER_HINT", "detector_family"]
