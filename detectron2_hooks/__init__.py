"""detectron2 side of lightning-gradcam: adapters, DetectionCAM, config keys.

Importing the package registers ``CAMRes5ROIHeads``, ``CAMStandardROIHeads``,
``CAMCascadeROIHeads`` (``ROI_HEADS_REGISTRY``), ``CAMRetinaNet`` and ``CAMFCOS``
(``META_ARCH_REGISTRY``); all five are exported here.
"""

import warnings

with warnings.catch_warnings():
    # detectron2's import-time torch.jit.script calls warn on recent torch; the commands
    # would print that next to their one-line errors.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from . import adapters  # noqa: F401  (registers the adapters)
from .adapters import (
    CAMFCOS,
    CAMCascadeROIHeads,
    CAMRes5ROIHeads,
    CAMRetinaNet,
    CAMStandardROIHeads,
)
from .config import add_gradcam_config, to_cam_config
from .explain import Detection, DetectionCAM
from .hook import GradCAMHook
from .predictor import CAMPredictor

__all__ = [
    "DetectionCAM",
    "CAMPredictor",
    "Detection",
    "CAMRes5ROIHeads",
    "CAMStandardROIHeads",
    "CAMCascadeROIHeads",
    "CAMRetinaNet",
    "CAMFCOS",
    "add_gradcam_config",
    "to_cam_config",
    "GradCAMHook",
]
