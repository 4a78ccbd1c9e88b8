"""Generated detection data on disk in Ultralytics' YOLO format: scenes of shapes
(``core.synthetic.draw_scene``) with one label file per image, and the data YAML."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..core.synthetic import SHAPE_NAMES, draw_scene

__all__ = ["write_shapes_dataset"]


def write_shapes_dataset(
    root: str | Path,
    num_train: int = 16,
    num_val: int = 4,
    size: int = 64,
    seed: int = 0,
    num_objects: int = 2,
    size_range: tuple[int, int] | None = None,
) -> Path:
    """Write ``images/{train,val}/*.png`` and ``labels/{train,val}/*.txt`` (one ``class cx
    cy w h`` line per object, normalised) under ``root``; return the ``data.yaml`` to pass
    to ``YOLO.train(data=...)``. Classes are ``SHAPE_NAMES``; reproducible by ``seed``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            scene, boxes, classes = draw_scene(rng, size, size, num_objects, size_range)
            cv2.imwrite(str(root / "images" / split / f"{index:04d}.png"), scene[..., ::-1])
            lines = [
                f"{c} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
                for (x0, y0, x1, y1), c in zip(boxes, classes)
            ]
            (root / "labels" / split / f"{index:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(SHAPE_NAMES))
    data = root / "data.yaml"
    data.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}"
    )
    return data
