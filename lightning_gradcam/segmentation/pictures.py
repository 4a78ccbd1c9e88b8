"""Segmentation pictures: a class's map over the image with that class's mask outlined."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..core.render import caption, overlay, resize_max
from ..pictures import WHITE, evidence_text

__all__ = ["outline_mask", "outlined_tile"]


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


def outlined_tile(
    image: np.ndarray,
    cam: torch.Tensor | None,
    mask: torch.Tensor,
    text: str,
    *,
    evidence: bool = True,
    colormap: str | int = "jet",
    alpha: float = 0.5,
    max_size: int | None = None,
    missing: str | None = None,
) -> np.ndarray:
    """The map ``cam`` ``(H, W)`` over ``image`` with ``mask`` outlined, shrunk to
    ``max_size``, captioned ``text``. Without evidence (or no map) the image alone, outlined,
    captioned ``text: no positive evidence`` (or ``text: <missing>``): said, never a blank
    overlay."""
    if cam is None or not evidence:
        picture = image
        text = evidence_text(text, False) if missing is None else f"{text}: {missing}"
    else:
        picture = overlay(image, cam, colormap, alpha)
    return caption(resize_max(outline_mask(picture, mask), max_size), text)
