"""Segmentation pictures: a class's mask outlined (the tile itself is ``core.tiles.map_tile``)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..pictures import WHITE

__all__ = ["outline_mask"]


def outline_mask(
    picture: np.ndarray, mask: torch.Tensor | np.ndarray, color: tuple[int, int, int] = WHITE
) -> np.ndarray:
    """``picture`` ``uint8 (H, W, 3)`` with the outline of ``mask`` ``(H, W)`` (bool or 0/1)
    drawn on a copy, one pixel wide (``cv2.findContours``, outer and inner borders)."""
    mask = np.ascontiguousarray(torch.as_tensor(mask).cpu().numpy().astype(np.uint8))
    if mask.shape != picture.shape[:2]:
        raise ValueError(f"mask {mask.shape} must have the picture's size {picture.shape[:2]}")
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(picture.copy())
    cv2.drawContours(out, contours, -1, color, 1)
    return out
