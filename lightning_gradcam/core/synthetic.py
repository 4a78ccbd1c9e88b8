"""Labelled synthetic images in which one object decides the class and its box is known.

Each image is a cluttered background (noise and random thin lines) with shapes drawn on it;
the class of an object is its shape (``SHAPE_NAMES``), never its colour, size or place. A
classifier that learns the task must look at the object, so a correct map lands inside the
returned box. Used by the examples, the tests and the benchmarks; no downloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

__all__ = [
    "SHAPE_NAMES",
    "ShapesBatch",
    "SegmentationShapes",
    "make_shapes",
    "make_segmentation_shapes",
    "draw_scene",
    "scene_mask",
]

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass
class ShapesBatch:
    """``images (N, 3, H, W)`` float32 in [0, 1]; ``labels (N,)`` long; ``boxes (N, 4)``
    float32 ``(x0, y0, x1, y1)`` in pixels, the box of the object that decides the label."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()


def _draw_shape(canvas: np.ndarray, kind: int, box: tuple[int, int, int, int], color) -> None:
    x0, y0, x1, y1 = box
    if kind == 0:
        center = ((x0 + x1) // 2, (y0 + y1) // 2)
        cv2.ellipse(canvas, center, ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360, color, -1)
    elif kind == 1:
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, -1)
    else:
        points = np.array([[(x0 + x1) // 2, y0], [x0, y1], [x1, y1]], dtype=np.int32)
        cv2.fillPoly(canvas, [points], color)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    canvas = (rng.random((height, width, 3)) * 60 + 40).astype(np.uint8)
    for _ in range(3):  # clutter: thin lines that carry no class information
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(canvas, p0, p1, tuple(int(c) for c in rng.integers(60, 256, 3)), 1)
    return canvas


def _place(rng, height, width, size, taken: list) -> tuple[int, int, int, int] | None:
    for _ in range(50):
        x0 = int(rng.integers(1, width - size - 1))
        y0 = int(rng.integers(1, height - size - 1))
        box = (x0, y0, x0 + size, y0 + size)
        if all(box[2] < t[0] or t[2] < box[0] or box[3] < t[1] or t[3] < box[1] for t in taken):
            return box
    return None


def draw_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_objects: int = 1,
    size_range: tuple[int, int] | None = None,
    num_classes: int = len(SHAPE_NAMES),
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int]]:
    """One ``uint8 (H, W, 3)`` RGB scene with up to ``num_objects`` non-overlapping shapes.

    Returns the image, the objects' boxes ``(x0, y0, x1, y1)`` and their classes.
    """
    low, high = size_range or (max(8, min(height, width) // 4), max(10, min(height, width) // 2))
    canvas = _background(rng, height, width)
    boxes: list[tuple[int, int, int, int]] = []
    classes: list[int] = []
    for _ in range(num_objects):
        box = _place(rng, height, width, int(rng.integers(low, high + 1)), boxes)
        if box is None:
            break
        kind = int(rng.integers(0, num_classes))
        _draw_shape(canvas, kind, box, tuple(int(c) for c in rng.integers(120, 256, 3)))
        boxes.append(box)
        classes.append(kind)
    return canvas, boxes, classes


def make_shapes(
    num_images: int, size: int = 64, seed: int = 0, num_classes: int = len(SHAPE_NAMES)
) -> ShapesBatch:
    """``num_images`` single-object scenes of ``size x size`` pixels, reproducible by seed."""
    if not 1 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_NAMES)}, got {num_classes}")
    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    for _ in range(num_images):
        image, scene_boxes, scene_classes = draw_scene(rng, size, size, 1, num_classes=num_classes)
        images.append(image)
        labels.append(scene_classes[0])
        boxes.append(scene_boxes[0])
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return ShapesBatch(
        images=pixels.contiguous(),
        labels=torch.tensor(labels, dtype=torch.long),
        boxes=torch.tensor(boxes, dtype=torch.float32),
    )


@dataclass
class SegmentationShapes:
    """``images (N, 3, H, W)`` float32 in [0, 1]; ``masks (N, H, W)`` long class ids per
    pixel: 0 for the background, ``1 + shape`` for a pixel of a shape (``SHAPE_NAMES``)."""

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return self.masks.shape[0]


def scene_mask(
    height: int, width: int, boxes: list[tuple[int, int, int, int]], classes: list[int]
) -> np.ndarray:
    """``uint8 (H, W)`` class ids of a ``draw_scene`` scene: the same shapes drawn again,
    filled with ``1 + class`` on a background of 0, so mask and image agree pixel for pixel."""
    mask = np.zeros((height, width), np.uint8)
    for box, kind in zip(boxes, classes):
        _draw_shape(mask, kind, box, 1 + kind)
    return mask


def make_segmentation_shapes(
    num_images: int,
    size: int = 64,
    seed: int = 0,
    num_objects: int = 2,
    num_classes: int = len(SHAPE_NAMES),
) -> SegmentationShapes:
    """``num_images`` scenes of ``size x size`` pixels with 1 to ``num_objects`` shapes each
    and their per-pixel class masks (``SegmentationShapes``), reproducible by seed."""
    if not 1 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_NAMES)}, got {num_classes}")
    if num_objects < 1:
        raise ValueError(f"num_objects must be at least 1, got {num_objects}")
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(num_images):
        count = int(rng.integers(1, num_objects + 1))
        image, boxes, classes = draw_scene(rng, size, size, count, num_classes=num_classes)
        images.append(image)
        masks.append(scene_mask(size, size, boxes, classes))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return SegmentationShapes(
        images=pixels.contiguous(), masks=torch.from_numpy(np.stack(masks)).long()
    )
