"""lightning-gradcam: Grad-CAM and Grad-CAM++ as a training-time instrument."""

from .core.detector_sides import register_detector_side
from .core.layers import LayerNotFoundError
from .core.methods import CAMMethod, register_method, unregister_method
from .core.targets import TopK
from .detection import DetectionCAM
from .engine import CAMEngine, CAMResult
from .segmentation import Region, SegmentationCAM

__all__ = [
    "CAMEngine",
    "CAMMethod",
    "CAMResult",
    "DetectionCAM",
    "GradCAMCallback",
    "GradCAMTrainerCallback",
    "GradCAMYOLOCallback",
    "LayerNotFoundError",
    "Region",
    "SegmentationCAM",
    "TopK",
    "register_method",
    "unregister_method",
]
__version__ = "0.1.0"


def _is_ultralytics(model: object) -> bool:
    return type(model).__module__.split(".")[0] == "ultralytics"


def _yolo_detection_cam(model, *args, **kwargs):
    from .yolo.explain import YOLODetectionCAM  # Ultralytics (AGPL) only when a YOLO comes

    return YOLODetectionCAM(model, *args, **kwargs)


register_detector_side(_is_ultralytics, _yolo_detection_cam)


def __getattr__(name: str):
    # The callback imports Lightning; keep `import lightning_gradcam` light for engine users.
    if name == "GradCAMCallback":
        from .lightning.callback import GradCAMCallback

        return GradCAMCallback
    if name == "GradCAMTrainerCallback":  # imports transformers
        from .hf.callback import GradCAMTrainerCallback

        return GradCAMTrainerCallback
    if name == "GradCAMYOLOCallback":  # imports Ultralytics (AGPL) only when asked for
        from .yolo.callback import GradCAMYOLOCallback

        return GradCAMYOLOCallback
    raise AttributeError(f"module 'lightning_gradcam' has no attribute {name!r}")
