"""Generated detection data: scenes of shapes with their boxes, in torchvision's format."""

from __future__ import annotations

import numpy as np
import torch

from ..core.synthetic import SHAPE_NAMES, draw_scene

__all__ = ["DETECTION_CLASS_NAMES", "shapes_detection_batch"]

#: Class names of ``shapes_detection_batch``'s labels: 0 is torchvision's background.
DETECTION_CLASS_NAMES: tuple[str, ...] = ("background", *SHAPE_NAMES)


def shapes_detection_batch(
    num_images: int,
    size: int | tuple[int, int] = 96,
    seed: int = 0,
    num_objects: int = 2,
    size_range: tuple[int, int] | None = None,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``(images, targets)`` as torchvision's detectors take them: images ``(3, H, W)``
    float32 in [0, 1], targets ``{"boxes": (n, 4) float32, "labels": (n,) int64}`` with
    labels ``1..3`` (``DETECTION_CLASS_NAMES``; 0 is the background). ``size`` is one side
    or ``(height, width)``; reproducible by ``seed``."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(num_images):
        scene, boxes, classes = draw_scene(rng, height, width, num_objects, size_range)
        images.append(torch.from_numpy(scene).permute(2, 0, 1).float().div(255.0).contiguous())
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(classes, dtype=torch.int64) + 1,
            }
        )
    return images, targets
