"""detectron2 side of lightning-gradcam: adapters, Detectron2CAM, config keys.

Importing the package registers ``CAMRes5ROIHeads``, ``CAMStandardROIHeads``,
``CAMCascadeROIHeads`` (``ROI_HEADS_REGISTRY``), ``CAMRetinaNet`` and ``CAMFCOS``
(``META_ARCH_REGISTRY``); all five are exported here. ``DetectionCAM`` is a deprecated
alias of ``Detectron2CAM`` (the torchvision explainer is ``lightning_gradcam.DetectionCAM``):
it warns once per process.
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
from .explain import Detection, Detectron2CAM
from .hook import GradCAMHook
from .predictor import CAMPredictor

__all__ = [
    "Detectron2CAM",
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

_warned = False


def __getattr__(name: str):
    # PEP 562: the old name still works, with one warning per process.
    global _warned
    if name == "DetectionCAM":
        if not _warned:
            _warned = True
            warnings.warn(
                "detectron2_hooks.DetectionCAM is deprecated: use detectron2_hooks.Detectron2CAM "
                "(lightning_gradcam.DetectionCAM is the torchvision / YOLO explainer)",
                FutureWarning,
                stacklevel=2,
            )
        return Detectron2CAM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
