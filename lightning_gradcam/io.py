"""Image files for ``lightning-gradcam``: the file functions of ``core.images_io``, and the
generated sample image the command explains when given no image."""

from __future__ import annotations

import numpy as np

from .core.images_io import (
    IMAGE_EXTENSIONS,
    ImageInputError,
    expand_image_paths,
    output_names,
    read_image,
    write_images,
)
from .synthetic import draw_scene

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInputError",
    "expand_image_paths",
    "read_image",
    "output_names",
    "write_images",
    "sample_image",
]


def sample_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """A ``size x size`` RGB scene of coloured shapes on clutter (``synthetic.draw_scene``),
    the same for the same seed: the command's default input, so it runs without files."""
    rng = np.random.default_rng(seed)
    image, _, _ = draw_scene(rng, size, size, num_objects=3)
    return image
