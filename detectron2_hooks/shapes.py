"""Generated shape scenes as a registered detectron2 dataset (examples and tests; no downloads).

Each image is a ``lightning_gradcam.synthetic.draw_scene`` scene: circles, squares and
triangles on a cluttered background, one box and class per shape. Images are written as PNG
files, so detectron2's stock ``DatasetMapper`` reads them like any other dataset.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from lightning_gradcam.core.synthetic import SHAPE_NAMES, draw_scene

__all__ = ["make_shape_dicts", "register_shapes", "unregister"]


def make_shape_dicts(
    folder: str,
    count: int,
    size: int = 128,
    seed: int = 0,
    max_objects: int = 3,
    prefix: str = "shapes",
) -> list[dict]:
    """Write ``count`` scenes of ``size x size`` pixels to ``folder`` and return detectron2
    dataset dicts (``file_name``, ``height``, ``width``, ``image_id``, ``annotations`` with
    ``XYXY_ABS`` boxes and ``category_id`` = index into ``SHAPE_NAMES``)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    dicts = []
    for index in range(count):
        image, boxes, classes = draw_scene(
            rng, size, size, num_objects=int(rng.integers(1, max_objects + 1))
        )
        path = os.path.join(folder, f"{prefix}_{index:05d}.png")
        if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        dicts.append(
            {
                "file_name": path,
                "height": size,
                "width": size,
                "image_id": index,
                "annotations": [
                    {
                        "bbox": [float(v) for v in box],
                        "bbox_mode": BoxMode.XYXY_ABS,
                        "category_id": c,
                    }
                    for box, c in zip(boxes, classes)
                ],
            }
        )
    return dicts


def register_shapes(
    name: str, folder: str, count: int, size: int = 128, seed: int = 0
) -> list[dict]:
    """Generate scenes (see ``make_shape_dicts``) and register them as dataset ``name`` with
    ``thing_classes = SHAPE_NAMES``; a dataset already registered under ``name`` is replaced."""
    dicts = make_shape_dicts(folder, count, size=size, seed=seed, prefix=name)
    unregister(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(thing_classes=list(SHAPE_NAMES))
    return dicts


def unregister(name: str) -> None:
    """Remove ``name`` from the dataset and metadata catalogs (no error if absent)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
