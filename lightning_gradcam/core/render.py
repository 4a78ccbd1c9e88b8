"""Pictures from maps with OpenCV: heat maps, overlays, captions, boxes, grids.

Every function takes and returns ``uint8`` RGB images ``(H, W, 3)`` (numpy), except
``to_uint8_image`` (tensor in) and ``to_chw`` (layout out); maps are ``(H, W)`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

__all__ = [
    "COLORMAPS",
    "to_uint8_image",
    "heatmap",
    "overlay",
    "caption",
    "draw_boxes",
    "grid",
    "to_chw",
    "resize_max",
]

#: Colour-map names accepted wherever a ``colormap`` argument is (or pass a cv2 constant).
COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}


def colormap_code(colormap: str | int) -> int:
    if isinstance(colormap, str):
        try:
            return COLORMAPS[colormap]
        except KeyError:
            raise ValueError(
                f"unknown colour map {colormap!r}; choose from {', '.join(COLORMAPS)} "
                "or pass an OpenCV COLORMAP_* constant"
            ) from None
    return int(colormap)


def to_uint8_image(
    image: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """A ``(C, H, W)`` float tensor to ``uint8 (H, W, 3)``: ``x * std + mean``, then [0, 1] to
    [0, 255] (values are clipped). One channel is repeated to three. A uint8 tensor (a
    pipeline whose model converts its input) is read as 0-255.

    Without ``mean``/``std`` an image outside [0, 1] is min-max scaled, so a normalised
    batch still renders recognisably.
    """
    x = image.detach().float().cpu()
    if x.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(x.shape)}")
    if image.dtype == torch.uint8:  # a uint8 pipeline: 0-255, whatever mean/std say
        x = x / 255.0
    elif mean is not None or std is not None:
        channels = x.shape[0]
        m = torch.as_tensor(mean if mean is not None else [0.0] * channels).view(-1, 1, 1)
        s = torch.as_tensor(std if std is not None else [1.0] * channels).view(-1, 1, 1)
        x = x * s + m
    elif x.min() < 0 or x.max() > 1:
        x = (x - x.min()) / (x.max() - x.min() + 1e-7)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = x[:3].clamp(0, 1).permute(1, 2, 0).numpy()
    return np.ascontiguousarray((x * 255.0 + 0.5).astype(np.uint8))


def _map_to_uint8(cam: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(cam, torch.Tensor):
        cam = cam.detach().float().cpu().numpy()
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32))
    if cam.ndim != 2:
        raise ValueError(f"expected one map (H, W), got shape {cam.shape}")
    return (np.clip(cam, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def heatmap(
    cam: torch.Tensor | np.ndarray,
    colormap: str | int = "jet",
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A map in [0, 1] as a coloured ``uint8 (H, W, 3)`` RGB picture, resized to
    ``size = (H, W)`` if given."""
    gray = _map_to_uint8(cam)
    if size is not None and gray.shape != tuple(size):
        gray = cv2.resize(gray, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap(gray, colormap_code(colormap))
    return cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray,
    cam: torch.Tensor | np.ndarray,
    colormap: str | int = "jet",
    alpha: float = 0.5,
) -> np.ndarray:
    """``(1 - alpha) * image + alpha * heatmap(cam)``, the map resized to the image."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = heatmap(cam, colormap, size=image.shape[:2])
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def caption(image: np.ndarray, text: str, height: int | None = None) -> np.ndarray:
    """The image with a black band below it holding ``text`` in white. The image's own
    pixels are never drawn over, whatever the font's extent in this OpenCV version."""
    width = image.shape[1]
    band = height or max(14, min(28, width // 8))
    scale = band / 30.0
    strip = np.zeros((band, width, 3), dtype=np.uint8)
    (text_w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if text_w > width - 4:  # shrink long captions rather than clip them
        scale *= (width - 4) / text_w
    # Drawn on the band alone: tall glyphs (OpenCV 4.x, bands of 28 px) reach above the
    # baseline's 72 % and would otherwise overwrite the image's last row.
    cv2.putText(
        strip,
        text,
        (2, int(band * 0.72)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return np.concatenate([np.asarray(image, dtype=np.uint8), strip], axis=0)


def draw_boxes(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]] | torch.Tensor | np.ndarray,
    labels: Sequence[str] | None = None,
    color: tuple[int, int, int] = (0, 255, 0),
) -> np.ndarray:
    """A copy of the image with ``(x0, y0, x1, y1)`` boxes and optional labels drawn."""
    out = image.copy()
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    thickness = max(1, round(min(image.shape[:2]) / 200))
    for index, box in enumerate(boxes):
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
        if labels is not None:
            scale = max(0.3, min(image.shape[:2]) / 600)
            text = str(labels[index])
            (_, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            # Above the box; for a box at the top edge, just inside it (on the canvas).
            cv2.putText(
                out,
                text,
                (x0 + 2, max(y0 - 3, text_h + 2)),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                color,
                1,
                cv2.LINE_AA,
            )
    return out


def grid(images: Sequence[np.ndarray], ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images (each ``(h, w, 3)``, sizes may differ) into one picture, row-major,
    ``ncols`` per row (default: all in one row), ``pad`` black pixels between."""
    if not images:
        raise ValueError("grid needs at least one image")
    ncols = ncols or len(images)
    nrows = -(-len(images) // ncols)
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    out = np.zeros(
        (nrows * cell_h + (nrows - 1) * pad, ncols * cell_w + (ncols - 1) * pad, 3), np.uint8
    )
    for index, im in enumerate(images):
        row, col = divmod(index, ncols)
        y, x = row * (cell_h + pad), col * (cell_w + pad)
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
    return out


def resize_max(image: np.ndarray, max_size: int | None) -> np.ndarray:
    """Shrink so the longer side is at most ``max_size`` (never enlarges)."""
    if not max_size or max(image.shape[:2]) <= max_size:
        return image
    scale = max_size / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def to_chw(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` to ``(3, H, W)`` (TensorBoard's default ``dataformats="CHW"``)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1))
