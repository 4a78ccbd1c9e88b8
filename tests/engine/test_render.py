"""Rendering with OpenCV: heat map, overlay, caption, grid, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_gradcam.core.render import (
    COLORMAPS,
    caption,
    draw_boxes,
    grid,
    heatmap,
    overlay,
    resize_max,
    to_chw,
    to_uint8_image,
)

from .picture_checks import assert_caption_visible


@pytest.fixture
def cam():
    return torch.linspace(0, 1, 12 * 16).reshape(12, 16)


def test_heatmap_shape_dtype_and_colours(cam):
    picture = heatmap(cam)
    assert picture.shape == (12, 16, 3) and picture.dtype == np.uint8
    # jet: low values blue, high values red (RGB order).
    assert picture[0, 0, 2] > picture[0, 0, 0] and picture[-1, -1, 0] > picture[-1, -1, 2]
    assert heatmap(cam, size=(24, 8)).shape == (24, 8, 3)
    assert not np.array_equal(heatmap(cam, "viridis"), picture)


def test_unknown_colormap_lists_choices(cam):
    with pytest.raises(ValueError, match=r"unknown colour map 'rainbowz'; choose from jet, turbo"):
        heatmap(cam, "rainbowz")
    assert set(COLORMAPS) >= {"jet", "turbo", "viridis"}


def test_to_uint8_image_denormalises():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.1]
    pixels = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    normalised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    image = to_uint8_image(normalised, mean, std)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    expected = (pixels.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    assert to_uint8_image(torch.rand(1, 5, 7)).shape == (5, 7, 3)


def test_overlay_alpha(cam):
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    assert np.array_equal(overlay(image, cam, alpha=0.0), image)
    assert np.array_equal(overlay(image, cam, alpha=1.0), heatmap(cam))
    half = overlay(image, cam, colormap="turbo", alpha=0.5)
    expected = 0.5 * image.astype(float) + 0.5 * heatmap(cam, "turbo").astype(float)
    assert half.shape == image.shape and half.dtype == np.uint8
    assert np.abs(half - expected).max() <= 1
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        overlay(image, cam, alpha=1.5)
    # A map at the layer's resolution is resized to the image.
    assert overlay(image, cam[::4, ::4]).shape == image.shape


@pytest.mark.parametrize(
    ("width", "text"),
    [
        (40, "circle 0.93"),
        (30, "iter 3: no detections"),  # shrunk to fit the smallest band
        (160, "gradcam: no positive evidence"),
        (600, "iter 3: no detections"),
    ],
)
def test_caption_adds_a_band_with_visible_text(width, text):
    image = np.random.default_rng(0).integers(0, 256, (32, width, 3), dtype=np.uint8)
    out = caption(image, text)
    assert out.shape[0] > 32 and out.shape[1:] == (width, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:32], image)
    assert not caption(image, "")[32:].any()  # the band alone is black
    assert_caption_visible(out[32:], text)


@pytest.mark.parametrize("width", [48, 64, 96])
def test_a_caption_too_long_for_one_line_wraps_at_a_legible_size(width):
    """Issue 26.6: "no positive evidence" was shrunk to 6 px glyphs on 64-96 px tiles. Now
    it is never drawn below MIN_CAPTION_SCALE (capitals about 10 px): it wraps instead."""
    image = np.full((32, width, 3), 100, np.uint8)
    text = "circle 0.53: no positive evidence"
    out = caption(image, text)
    assert out.shape[1:] == (width, 3) and np.array_equal(out[:32], image)
    band = out[32:]
    line = max(14, min(28, width // 8))
    assert band.shape[0] % line == 0 and band.shape[0] // line >= 2  # wrapped, not shrunk
    heights = []
    for number in range(band.shape[0] // line):
        lit = np.where(band[number * line : (number + 1) * line].max(axis=(1, 2)) > 128)[0]
        heights.append(lit.max() - lit.min() + 1 if lit.size else 0)
    # lower case at least 6 px, tall letters ("l", "t", digits) at least 9 px
    assert min(heights) >= 6 and max(heights) >= 9, heights
    assert_caption_visible(band, text)


def test_grid_layout():
    tiles = [np.full((10, 12, 3), v, np.uint8) for v in (50, 100, 150)]
    out = grid(tiles, ncols=2, pad=2)
    assert out.shape == (2 * 10 + 2, 2 * 12 + 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 50 and out[0, 14, 0] == 100 and out[12, 0, 0] == 150
    assert out[21, 25].tolist() == [0, 0, 0]  # the empty fourth cell
    assert grid(tiles).shape == (10, 3 * 12 + 4, 3)
    with pytest.raises(ValueError, match="at least one image"):
        grid([])


def test_chw_and_hwc_layouts():
    image = np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    chw = to_chw(image)
    assert chw.shape == (3, 6, 9) and chw.dtype == np.uint8 and chw.flags.c_contiguous
    assert np.array_equal(chw[1], image[:, :, 1])


def test_boxes_and_resize():
    image = np.zeros((40, 60, 3), np.uint8)
    boxed = draw_boxes(image, torch.tensor([[5.0, 5.0, 20.0, 30.0]]), labels=["square"])
    assert boxed[5, 10].tolist() == [0, 255, 0] and image.max() == 0
    assert resize_max(image, 30).shape == (20, 30, 3)
    assert resize_max(image, 100) is image


@pytest.mark.parametrize("size", [60, 600, 1200])
def test_box_labels_at_the_top_edge_stay_on_the_canvas(size):
    # Labels go above their box; a box touching the top edge has no room there, so its label
    # must be drawn inside the picture, whole, as it is for a box further down.
    image = np.zeros((size, size, 3), np.uint8)
    side = size // 2

    def label_pixels(y0):
        box = torch.tensor([[size / 10, y0, size / 10 + side, y0 + side]])
        with_label = draw_boxes(image, box, labels=["circle 0.93"])
        return int((with_label != draw_boxes(image, box)).any(axis=2).sum())

    at_top, lower = label_pixels(0.0), label_pixels(size / 3)
    assert lower > 0
    assert at_top == pytest.approx(lower, rel=0.1)  # nothing of the label clipped


def test_a_thumbnail_narrower_than_the_wrap_width_keeps_one_shrunk_line():
    image = np.full((32, 32, 3), 100, np.uint8)
    out = caption(image, "ep 3: no positive evidence")
    assert out.shape == caption(image, "").shape and out[32:].any()
