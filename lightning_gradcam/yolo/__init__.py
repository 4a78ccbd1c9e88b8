"""Ultralytics YOLO: per-detection Grad-CAM for ``DetectionModel`` / ``YOLO`` models.

Ultralytics is AGPL-3.0 and optional (``pip install lightning-gradcam[ultralytics]``): this
package imports it only when a YOLO model is explained, never at ``import lightning_gradcam``.
"""

from .explain import YOLODetectionCAM, is_ultralytics_model

__all__ = ["YOLODetectionCAM", "is_ultralytics_model"]
