"""Semantic segmentation: one map per (image, class), Seg-Grad-CAM's target."""

from .explain import Region, SegmentationCAM, SegmentationMaps
from .outputs import looks_like_segmentation, segmentation_logits

__all__ = [
    "Region",
    "SegmentationCAM",
    "SegmentationMaps",
    "looks_like_segmentation",
    "segmentation_logits",
]
