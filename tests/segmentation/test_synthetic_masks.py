"""Shapes scenes with per-pixel class masks: the mask is the drawn shapes, pixel for pixel."""

from __future__ import annotations

import numpy as np
import torch

from lightning_gradcam.core.synthetic import (
    draw_scene,
    make_segmentation_shapes,
    make_shapes,
    scene_mask,
)


def test_masks_are_the_drawn_shapes():
    rng = np.random.default_rng(3)
    image, boxes, classes = draw_scene(rng, 48, 48, 3)
    mask = scene_mask(48, 48, boxes, classes)
    assert set(np.unique(mask).tolist()) == {0, *(1 + c for c in classes)}
    # Shapes are drawn with channel values >= 120, the background below 100 (but its
    # clutter lines, which the mask leaves out).
    assert (image[mask > 0].max(axis=1) >= 120).all()
    for box, kind in zip(boxes, classes):
        x0, y0, x1, y1 = box
        inside = mask[y0 : y1 + 1, x0 : x1 + 1]
        assert (inside == 1 + kind).any() and set(np.unique(inside)) <= {0, 1 + kind}


def test_make_segmentation_shapes_reproducible_and_typed():
    first = make_segmentation_shapes(6, 32, seed=5, num_objects=2)
    second = make_segmentation_shapes(6, 32, seed=5, num_objects=2)
    assert first.images.shape == (6, 3, 32, 32) and first.masks.shape == (6, 32, 32)
    assert first.masks.dtype == torch.long and len(first) == 6
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    assert int(first.masks.max()) <= 3 and bool((first.masks > 0).any(dim=(1, 2)).all())


def test_make_shapes_unchanged():
    """The classification scenes come out as on main before the masks were added."""
    batch = make_shapes(2, 32, seed=0)
    assert batch.labels.tolist() == [1, 0]
    assert batch.boxes.tolist() == [[6.0, 6.0, 21.0, 21.0], [13.0, 19.0, 23.0, 29.0]]
