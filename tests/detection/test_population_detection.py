"""The detection task's whole-set measure (``metrics_on="validation"``): over batches, the sums
give exactly the scalars the task's report gives on the same images, missed objects as 0."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_gradcam.core.population import MetricSums
from lightning_gradcam.tasks.base import TaskOptions
from lightning_gradcam.tasks.detection import DetectionTask
from lightning_gradcam.tasks.population import measure_for

from .tiny import images as detection_images
from .tiny import tiny_detector


def _sums(task, network, batches) -> dict[str, float]:
    """The means of ``task``'s whole-set measure over ``batches``."""
    measure = measure_for(task)
    sums = MetricSums(task.options.methods, measure.fields, measure.groups)
    for batch in batches:
        measure.measure(network, batch, sums)
    sums.reduce()  # one process: the sums themselves
    return measure.means(sums)


def _assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-9), (key, got[key], value)


def test_detection_batches_give_the_sample_reports_scalars():
    model = tiny_detector("faster_rcnn", seed=5).eval()
    batch = detection_images(seed=2)
    with torch.no_grad():
        outputs = model(batch)
    targets = []
    for index, out in enumerate(outputs):  # found objects, and one nothing detects
        boxes, labels = out["boxes"][:1], out["labels"][:1]
        if index == 0:
            boxes = torch.cat([boxes, torch.tensor([[5.0, 5.0, 40.0, 40.0]])])
            labels = torch.cat([labels, torch.tensor([99])])
        targets.append({"boxes": boxes, "labels": labels})
    methods = ("gradcam", "gradcam++")
    task = DetectionTask(TaskOptions(methods=methods))
    got = _sums(task, model, [(batch[:1], targets[:1]), (batch[1:], targets[1:])])
    fixed = DetectionTask(TaskOptions(methods=methods, max_image_size=None))
    samples = fixed.parse_batch((batch, targets))
    want = fixed.report(fixed.explain(model, samples), samples, 0, 0).scalars
    _assert_same(got, want)
    assert got["gradcam/found_rate"] == pytest.approx(2 / 3)
