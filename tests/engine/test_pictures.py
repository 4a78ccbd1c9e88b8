"""lightning_gradcam.pictures: how sheets are composed from the render primitives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_gradcam.core.render import caption, draw_boxes, grid, heatmap, overlay, resize_max
from lightning_gradcam.pictures import (
    detection_sheet,
    film_strip,
    input_picture,
    inputs_sheet,
    no_detections_picture,
    overlay_tile,
    seed_pictures,
    seed_sheet,
    sheet,
)

from .picture_checks import assert_caption_visible


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)


@pytest.fixture
def cam():
    return torch.linspace(0, 1, 40 * 60).reshape(40, 60)


def test_overlay_tile_is_overlay_then_boxes_then_shrink_then_caption(image, cam):
    box = torch.tensor([[5.0, 5.0, 30.0, 30.0]])
    tile = overlay_tile(image, cam, "circle 0.93", boxes=box, labels=["c"], max_size=30)
    expected = caption(resize_max(draw_boxes(overlay(image, cam), box, ["c"]), 30), "circle 0.93")
    np.testing.assert_array_equal(tile, expected)
    np.testing.assert_array_equal(overlay_tile(image, cam), overlay(image, cam))


def test_sheets_hold_at_most_eight_per_row_and_inputs_get_their_boxes(image):
    tiles = [image] * 10
    assert sheet(tiles).shape == (2 * 40 + 2, 8 * 60 + 7 * 2, 3)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    inputs = inputs_sheet([image, image], boxes, ["a", "b"])
    expected = grid([caption(draw_boxes(image, boxes[i : i + 1]), t) for i, t in enumerate("ab")])
    np.testing.assert_array_equal(inputs, expected)


def test_film_strip_rows_and_columns_and_a_missing_cell_left_black(image):
    first = [np.full((10, 12, 3), 200, np.uint8), np.full((10, 12, 3), 100, np.uint8)]
    pass0 = [np.full((10, 12, 3), 50, np.uint8), None]  # the second row not matched then
    pass1 = [np.full((10, 12, 3), 60, np.uint8), np.full((10, 12, 3), 70, np.uint8)]
    strip = film_strip(first, [pass0, pass1])
    assert strip.shape == (2 * 10 + 2, 3 * 12 + 2 * 2, 3)
    assert strip[0, 0, 0] == 200 and strip[0, 14, 0] == 50 and strip[0, 28, 0] == 60
    assert strip[12, 0, 0] == 100 and strip[12:, 14:26].max() == 0 and strip[12, 28, 0] == 70
    with pytest.raises(ValueError, match="at least one row"):
        film_strip([], [])


def test_detection_sheet_rows_are_detections_columns_layers(image, cam):
    boxes = [torch.tensor([1.0, 1.0, 20.0, 20.0]), torch.tensor([30.0, 10.0, 50.0, 30.0])]
    out = detection_sheet(
        image,
        [(boxes[0], "a 0.9"), (boxes[1], "b 0.8")],
        [[cam, 1 - cam, cam], [cam, cam, 1 - cam]],
        [["l1", "l2", "l3"]] * 2,
        ncols=3,
    )
    tile_h = caption(image, "x").shape[0]
    assert out.shape == (2 * tile_h + 2, 3 * 60 + 2 * 2, 3)
    first = caption(draw_boxes(overlay(image, cam), boxes[0][None], ["a 0.9"]), "l1")
    np.testing.assert_array_equal(out[:tile_h, :60], first)


def test_no_detections_is_the_captioned_input(image):
    text = "iter 3: no detections"
    picture = no_detections_picture(image, text, max_size=30)
    shrunk = resize_max(image, 30)
    np.testing.assert_array_equal(picture, caption(shrunk, text))
    np.testing.assert_array_equal(picture[:20], shrunk)
    band = picture[20:]
    assert band.shape[0] > 0 and band.any()  # text on the black band, not a bare band
    assert_caption_visible(band, text)


def test_input_picture_converts_bgr_model_inputs():
    tensor = torch.zeros(3, 4, 5)
    tensor[0] = 255.0  # blue in BGR
    assert input_picture(tensor, "BGR")[0, 0].tolist() == [0, 0, 255]
    assert input_picture(tensor, "RGB")[0, 0].tolist() == [255, 0, 0]


def test_seed_pictures_and_sheet():
    view = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    cam = torch.rand(16, 16, generator=torch.Generator().manual_seed(1))
    kinds = {"gradcam": ("heatmap", "cam"), "guided_backprop": ("gb",)}.__getitem__
    pictures = seed_pictures(view, {"gradcam": cam}, {"guided_backprop": view}, kinds)
    assert list(pictures) == ["heatmap", "cam", "gb"]
    np.testing.assert_array_equal(pictures["heatmap"], heatmap(cam))
    labels = {"gradcam": "Grad-CAM", "guided_backprop": "guided backprop"}
    out = seed_sheet(view, pictures, ("gradcam", "guided_backprop"), kinds, labels, "cat")
    band = caption(pictures["gb"], "x").shape[0]
    # one row of four captioned cells; a long label wraps, so the row is the tallest cell
    assert out.shape[1:] == (4 * 16 + 3 * 2, 3) and out.shape[0] >= band
