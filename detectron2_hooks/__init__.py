"""detectron2 side of lightning-gradcam: adapters, DetectionCAM, config keys.

Importing the package registers ``CAMRes5ROIHeads``, ``CAMStandardROIHeads``
(``ROI_HEADS_REGISTRY``) and ``CAMRetinaNet`` (``META_ARCH_REGISTRY``).
"""

from . import adapters  # noqa: F401  (registers the adapters)
from .adapters import CAMRes5ROIHeads, CAMRetinaNet, CAMStandardROIHeads
from .config import add_gradcam_config, to_cam_config
from .explain import Detection, DetectionCAM
from .hook import GradCAMHook  # noqa: F401  (public: GradCAMHook)

__all__ = [
    "DetectionCAM",
    "Detection",
    "CAMRes5ROIHeads",
    "CAMStandardROIHeads",
    "CAMRetinaNet",
    "add_gradcam_config",
    "to_cam_config",
    "GradCAMHook",
]
