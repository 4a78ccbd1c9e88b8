"""Tiny torchvision detectors for tests (random init, small inputs, score threshold 0)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import (
    FCOS,
    KeypointRCNN,
    MaskRCNN,
    RetinaNet,
    fasterrcnn_mobilenet_v3_large_fpn,
    ssd300_vgg16,
    ssdlite320_mobilenet_v3_large,
)
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

SIZES = {"min_size": 96, "max_size": 128}
FAMILIES = ("faster_rcnn", "mask_rcnn", "keypoint_rcnn", "retinanet", "fcos", "ssdlite", "ssd300")


def _fpn(one_stage: bool = False) -> nn.Module:
    if one_stage:
        return resnet_fpn_backbone(
            backbone_name="resnet18",
            weights=None,
            trainable_layers=5,
            returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256),
        )
    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)


def tiny_detector(family: str, num_classes: int = 4, seed: int = 0) -> nn.Module:
    """A randomly initialised detector of ``family`` that detects (threshold 0)."""
    torch.manual_seed(seed)
    if family == "faster_rcnn":
        return fasterrcnn_mobilenet_v3_large_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=num_classes,
            box_score_thresh=0.0,
            box_detections_per_img=10,
            rpn_post_nms_top_n_test=50,
            **SIZES,
        )
    if family == "mask_rcnn":
        return MaskRCNN(
            _fpn(),
            num_classes,
            box_score_thresh=0.0,
            box_detections_per_img=10,
            rpn_post_nms_top_n_test=50,
            **SIZES,
        )
    if family == "keypoint_rcnn":
        return KeypointRCNN(
            _fpn(),
            num_classes,
            num_keypoints=3,
            box_score_thresh=0.0,
            box_detections_per_img=10,
            rpn_post_nms_top_n_test=50,
            **SIZES,
        )
    if family == "retinanet":
        return RetinaNet(_fpn(True), num_classes, score_thresh=0.0, detections_per_img=10, **SIZES)
    if family == "fcos":
        return FCOS(_fpn(True), num_classes, score_thresh=0.0, detections_per_img=10, **SIZES)
    if family in ("ssdlite", "ssd300"):
        build = ssdlite320_mobilenet_v3_large if family == "ssdlite" else ssd300_vgg16
        model = build(
            weights=None,
            weights_backbone=None,
            num_classes=num_classes,
            score_thresh=0.0,
            detections_per_img=10,
        )
        # The initial classification head is near zero (every softmax 1/K): spread it so
        # that scores differ, as in any trained model.
        with torch.no_grad():
            for module in model.head.classification_head.modules():
                if isinstance(module, nn.Conv2d):
                    # VGG's features are large: a smaller spread keeps the softmax unsaturated.
                    module.weight.normal_(0.0, 0.3 if family == "ssdlite" else 0.002)
        return model
    raise ValueError(family)


def images(seed: int = 0) -> list[torch.Tensor]:
    """Two images of different sizes, with some structure (random boxes on noise)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for height, width in ((100, 120), (90, 80)):
        image = torch.rand(3, height, width, generator=generator) * 0.3
        image[:, 20:60, 30:70] += 0.6
        out.append(image.clamp(0, 1))
    return out
