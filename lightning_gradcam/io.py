"""Image files for ``lightning-gradcam``: the file functions of ``core.images_io``, and the
generated sample image the command explains when given no image."""

from __future__ import annotations

import numpy as np

from .core import images_io
from .core.images_io import *  # noqa: F403  (re-exported: the command's file functions)
from .core.synthetic import draw_scene

__all__ = [*images_io.__all__, "sample_image"]


def sample_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """A ``size x size`` RGB scene of coloured shapes on clutter (``synthetic.draw_scene``),
    the same for the same seed: the command's default input, so it runs without files."""
    rng = np.random.default_rng(seed)
    image, _, _ = draw_scene(rng, size, size, num_objects=3)
    return image
