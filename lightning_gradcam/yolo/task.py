"""The detection task for Ultralytics YOLO: the Lightning detection task's per-object
matching, scalars, pictures and film strip (``tasks.detection.DetectionTask``), with what is
Ultralytics' own: its batches and its model, explained by ``YOLODetectionCAM``.

A batch is what an Ultralytics detection dataloader yields: ``img`` ``(B, 3, H, W)`` uint8
RGB, letterboxed; ``bboxes`` ``(n, 4)`` normalised ``(cx, cy, w, h)`` of the letterboxed
image; ``cls`` ``(n, 1)``; ``batch_idx`` ``(n,)``: the image each box belongs to.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.ops import box_convert

from ..tasks.base import TaskOptions
from ..tasks.detection import DetectionSamples, DetectionTask
from .explain import YOLODetectionCAM, is_ultralytics_model

__all__ = ["YOLODetectionTask", "samples_from_batch"]

_KEYS = ("img", "bboxes", "cls", "batch_idx")


def samples_from_batch(batch: Any) -> DetectionSamples:
    """An Ultralytics detection batch (module docstring) as ``DetectionSamples``: images
    ``(3, H, W)`` float in [0, 1] (``img / 255``, as Ultralytics' validator feeds them) and
    boxes ``(x0, y0, x1, y1)`` in the letterboxed image's pixels."""
    if not isinstance(batch, dict) or not set(_KEYS) <= set(batch):
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"an Ultralytics detection batch is a dict with {', '.join(_KEYS)}; got {got} "
            "(the trainer's validation loader of a detect task gives it)"
        )
    images = batch["img"]
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"batch['img'] must be (B, 3, H, W), got {getattr(images, 'shape', None)}")
    images = images.detach().cpu()
    images = images.float() / 255 if not images.is_floating_point() else images.float()
    height, width = images.shape[-2:]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    xywh = torch.as_tensor(batch["bboxes"]).detach().float().cpu().reshape(-1, 4) * scale
    boxes = box_convert(xywh, "cxcywh", "xyxy")
    classes = torch.as_tensor(batch["cls"]).detach().cpu().reshape(-1).long()
    owners = torch.as_tensor(batch["batch_idx"]).detach().cpu().reshape(-1).long()
    if not len(boxes) == len(classes) == len(owners):
        raise ValueError(
            f"the batch has {len(boxes)} bboxes, {len(classes)} cls and {len(owners)} "
            "batch_idx entries; they must be one per object"
        )
    return DetectionSamples(
        [image.clone() for image in images],
        [boxes[owners == i] for i in range(len(images))],
        [classes[owners == i] for i in range(len(images))],
    )


class YOLODetectionTask(DetectionTask):
    """Per ground-truth object, the YOLO detection that finds it (same class, IoU >= 0.5,
    the highest confidence among Ultralytics' NMS detections at ``conf``/``iou``), explained
    by its own class logit; scalars and pictures as ``DetectionTask``'s."""

    name: ClassVar[str] = "yolo_detection"

    def __init__(self, options: TaskOptions, conf: float = 0.25, iou: float = 0.7):
        super().__init__(options)
        self.conf, self.iou = conf, iou

    @classmethod
    def recognises(cls, network: nn.Module, batch: Any) -> bool:
        return is_ultralytics_model(network) and isinstance(batch, dict) and "bboxes" in batch

    def measured_samples(self, batch: Any) -> DetectionSamples:
        if self.options.batch_parser is not None:
            batch = self.options.batch_parser(batch)
        return samples_from_batch(batch)

    def parse_batch(self, batch: Any) -> DetectionSamples:
        return self.measured_samples(batch)  # check_samples refuses fixed samples without objects

    def _detection_cam(self, network: nn.Module) -> YOLODetectionCAM:
        if self._cam is not None and self._cam_for == id(network):
            return self._cam
        cam = YOLODetectionCAM(
            network,
            layer=self.options.layer,
            methods=self.options.methods,
            conf=self.conf,
            iou=self.iou,
        )
        self.layer_name = cam.layer
        self._cam, self._cam_for = cam, id(network)
        return cam
