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


# The smallest font scale drawn: FONT_HERSHEY_SIMPLEX's capitals are about 22 px x scale, so
# 0.45 keeps them 10 px tall, legible on a 64 px tile; narrower text wraps instead of shrinking.
MIN_CAPTION_SCALE = 0.45
# Below this width (32 px film-strip thumbnails) a legible font holds a few letters a line:
# wrapping would stack a tall band of fragments, so the caption is shrunk onto one line.
MIN_WRAP_WIDTH = 48
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def _wrapped(text: str, width: int, scale: float) -> list[str]:
    """``text`` in lines that fit ``width`` pixels at ``scale``: at word breaks, and inside a
    word only when the word alone is too wide."""
    lines: list[str] = []
    for word in text.split():
        while len(word) > 1 and _text_width(word, scale) > width:
            cut = 1
            while cut < len(word) and _text_width(word[: cut + 1], scale) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        if lines and _text_width(f"{lines[-1]} {word}", scale) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def caption(image: np.ndarray, text: str, height: int | None = None) -> np.ndarray:
    """The image with a black band below it holding ``text`` in white. The image's own
    pixels are never drawn over, whatever the font's extent in this OpenCV version.

    ``height`` is one line's height (default: from the width, 14 to 28 px). A caption too
    long for one line is drawn smaller down to ``MIN_CAPTION_SCALE``, then wrapped onto more
    lines (the band grows), so it stays legible on small tiles; on tiles narrower than
    ``MIN_WRAP_WIDTH`` it is shrunk onto one line."""
    width = image.shape[1]
    line = height or max(14, min(28, width // 8))
    scale = line / 30.0
    room = max(1, width - 4)
    if _text_width(text, scale) > room:  # shrink long captions down to a legible size
        floor = min(scale, MIN_CAPTION_SCALE) if width >= MIN_WRAP_WIDTH else 0.0
        scale = max(floor, scale * room / _text_width(text, scale))
    wrap = width >= MIN_WRAP_WIDTH and _text_width(text, scale) > room
    lines = _wrapped(text, room, scale) if wrap else [text]
    line = max(line, int(round(30 * scale))) if len(lines) > 1 else line
    strip = np.zeros((line * len(lines), width, 3), dtype=np.uint8)
    for number, words in enumerate(lines):
        # Drawn on the band alone: tall glyphs (OpenCV 4.x, bands of 28 px) reach above the
        # baseline's 72 % and would otherwise overwrite the image's last row.
        baseline = number * line + int(line * 0.72)
        cv2.putText(strip, words, (2, baseline), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
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
