"""lightning-gradcam: Grad-CAM and Grad-CAM++ as a training-time instrument."""

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
    "LayerNotFoundError",
    "Region",
    "SegmentationCAM",
    "TopK",
    "register_method",
    "unregister_method",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The callback imports Lightning; keep `import lightning_gradcam` light for engine users.
    if name == "GradCAMCallback":
        from .lightning.callback import GradCAMCallback

        return GradCAMCallback
    if name == "GradCAMTrainerCallback":  # imports transformers
        from .hf.callback import GradCAMTrainerCallback

        return GradCAMTrainerCallback
    raise AttributeError(f"module 'lightning_gradcam' has no attribute {name!r}")
