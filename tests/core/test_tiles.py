"""The one tile and the one film-strip policy (``core.tiles``), as every task uses them: a map
without positive evidence is never drawn, and a long run's strip keeps the first pass, the
latest and evenly spaced ones between, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_gradcam.core.render import caption, draw_boxes, overlay
from lightning_gradcam.core.tiles import FILMSTRIP_COLUMNS, StripPasses, map_tile
from lightning_gradcam.tasks import ClassificationTask, TaskOptions
from lightning_gradcam.tasks.classification_samples import make_samples


@pytest.fixture
def picture():
    return np.full((40, 50, 3), 120, np.uint8)


def _boxes(picture):
    return draw_boxes(picture, torch.tensor([[5.0, 5.0, 30.0, 30.0]]))


def test_a_tile_without_evidence_is_the_picture_with_its_marks_and_the_reason(picture):
    cam = torch.zeros(40, 50)
    tile = map_tile(picture, cam, "cat 0.12", evidence=False, marks=_boxes)
    np.testing.assert_array_equal(tile, caption(_boxes(picture), "cat 0.12: no positive evidence"))
    missed = map_tile(picture, None, "cat", reason="missed", marks=_boxes, map_marks=_boxes)
    np.testing.assert_array_equal(missed, caption(_boxes(picture), "cat: missed"))


def test_a_tile_with_evidence_is_the_overlay_then_the_marks(picture):
    cam = torch.linspace(0, 1, 50).repeat(40, 1)
    tile = map_tile(picture, cam, "cat 0.93", marks=_boxes)
    np.testing.assert_array_equal(tile, caption(_boxes(overlay(picture, cam)), "cat 0.93"))
    assert map_tile(picture, cam, None).shape == picture.shape  # no caption band


def test_strip_passes_keep_the_first_the_latest_and_bounded_memory():
    passes = StripPasses(max_columns=4)
    dropped_total = []
    for _ in range(100):
        column, dropped = passes.add()
        dropped_total += dropped
        assert len(passes.kept) <= 8
    shown = passes.shown()
    assert shown[0] == 0 and shown[-1] == 99 and len(shown) == 4
    assert column == 99 and 0 not in dropped_total
    gaps = np.diff(shown)
    assert gaps.max() - gaps.min() <= passes.stride  # evenly spaced, up to one stride
    small = StripPasses(max_columns=3)
    for _ in range(10):
        small.add()
    assert small.shown() == [0, 4, 9]  # the docstring's example


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).relu().mean((2, 3)))


def test_a_task_film_strip_follows_the_policy_over_a_long_run():
    torch.manual_seed(0)
    task = ClassificationTask(
        TaskOptions(methods=("gradcam",), layer="features", filmstrip_size=32, max_image_size=32)
    )
    samples = make_samples(torch.rand(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    network = _Linear()
    for epoch in range(30):
        task.report(task.explain(network, samples), samples, step=epoch, epoch=epoch)
    strip = task.filmstrip("gradcam")
    cell = 32 + 2  # a 32-px thumbnail and the 2-px pad
    assert strip.shape[1] == (FILMSTRIP_COLUMNS + 1) * cell - 2  # the input, then 12 passes
