"""What ``detectron2-gradcam`` makes of one image: its detections explained, and the pictures
to write, keyed by file name.

Files per image (``{det}`` = ``det00``, ``det01``, ... by decreasing score; ``{class}`` the
class name with anything but letters, digits, ``+`` and ``-`` as ``_``):

- ``{image}-detections.png``: the explained detections, boxes labelled ``index: class score``;
- ``{image}-{det}-{class}-{method}.png``: one detection's map as an overlay with its box,
  captioned with class, score and method; with several layers
  ``{image}-{det}-{class}-{layer}-{method}.png``;
- with strip layers (a glob such as ``head.cls_subnet.*``):
  ``{image}-{det}-{class}-cls_subnet-strip.png``, a column per layer and a row per method.

Example::

    result = explain_image(predictor, read_image("street.jpg"), "street", names, single, strip,
                           methods)
    write_images({out_dir / name: picture for name, picture in result.pictures.items()})
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lightning_gradcam.core.methods import get_method
from lightning_gradcam.pictures import detection_label, detection_pictures, detections_picture

from .explain import Detection
from .predictor import CAMPredictor

__all__ = ["STRIP_CELL", "ImageResult", "explain_image", "picture_names", "render_detection"]

#: Longer side, in pixels, of each cell of a strip (``--layer-name 'head.cls_subnet.*'``).
STRIP_CELL = 320


@dataclass(frozen=True)
class ImageResult:
    """One image explained: its detections, the pictures by file name, and the model input's
    ``(height, width)`` after the test-time resize."""

    detections: list[Detection]
    pictures: dict[str, np.ndarray]
    input_size: tuple[int, int]


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+-]+", "_", text).strip("_") or "_"


def picture_names(
    stem: str,
    index: int,
    class_name: str,
    single: Sequence[str],
    strip: Sequence[str],
    methods: Sequence[str],
) -> dict[tuple[str, str] | str, str]:
    """File names of one detection's pictures: ``{(layer, method): name}`` for single layers,
    ``{"strip": name}`` when there are strip layers."""
    base = f"{stem}-det{index:02d}-{_file_part(class_name)}"
    names: dict[tuple[str, str] | str, str] = {}
    for layer in single:
        middle = f"-{layer}" if len(single) > 1 else ""
        for method in methods:
            names[(layer, method)] = f"{base}{middle}-{method}.png"
    if strip:
        parent = ".".join(os.path.commonprefix([layer.split(".") for layer in strip]))
        names["strip"] = f"{base}-{_file_part(parent.removeprefix('head.')) or 'layers'}-strip.png"
    return names


def detection_title(det: Detection, index: int, names: Sequence[str]) -> str:
    """``index: class score``, as the box of a detection is labelled."""
    return f"{index}: {detection_label(det, names)}"


def render_detection(
    image: np.ndarray,
    det: Detection,
    index: int,
    names: Sequence[str],
    single: Sequence[str],
    strip: Sequence[str],
    methods: Sequence[str],
    colormap: str = "jet",
) -> dict[tuple[str, str] | str, np.ndarray]:
    """One detection's pictures, keyed as ``picture_names`` (see
    ``lightning_gradcam.pictures.detection_pictures``), strip cells ``STRIP_CELL`` px."""
    return detection_pictures(
        image,
        det,
        detection_title(det, index, names),
        single,
        strip,
        methods,
        {m: get_method(m).label for m in methods},
        colormap,
        STRIP_CELL,
    )


def explain_image(
    predictor: CAMPredictor,
    image: np.ndarray,
    stem: str,
    names: Sequence[str],
    single: Sequence[str],
    strip: Sequence[str],
    methods: Sequence[str],
    colormap: str = "jet",
) -> ImageResult:
    """Explain ``image`` (``(H, W, 3)`` uint8 RGB, the original: every picture is drawn on
    it) with ``predictor``, after converting it to the predictor's ``INPUT.FORMAT``; the
    pictures are named after ``stem`` and the class ``names``."""
    pixels = image[:, :, ::-1] if predictor.input_format == "BGR" else image
    pixels = np.ascontiguousarray(pixels)
    size = tuple(int(s) for s in predictor.model_input(pixels)["image"].shape[-2:])
    detections = predictor(pixels)
    labels = [detection_title(det, i, names) for i, det in enumerate(detections)]
    boxes = [det.box.tolist() for det in detections]
    pictures = {f"{stem}-detections.png": detections_picture(image, boxes, labels)}
    for index, det in enumerate(detections):
        rendered = render_detection(image, det, index, names, single, strip, methods, colormap)
        files = picture_names(stem, index, names[det.class_id], single, strip, methods)
        pictures.update({files[key]: pic for key, pic in rendered.items()})
    return ImageResult(detections, pictures, (size[0], size[1]))
