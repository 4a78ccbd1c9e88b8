"""The detection task's whole-set measure (``metrics_on="validation"``): over batches, the sums
give exactly the scalars the task's report gives on the same images, missed objects as 0."""

from __future__ import annotations

import pytest
import torch
from cam_population import assert_same_scalars, whole_set_means

from lightning_gradcam.tasks.base import TaskOptions
from lightning_gradcam.tasks.detection import DetectionTask

from .tiny import images as detection_images
from .tiny import tiny_detector


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
    got = whole_set_means(task, model, [(batch[:1], targets[:1]), (batch[1:], targets[1:])])
    fixed = DetectionTask(TaskOptions(methods=methods, max_image_size=None))
    samples = fixed.parse_batch((batch, targets))
    want = fixed.report(fixed.explain(model, samples), samples, 0, 0).scalars
    assert_same_scalars(got, want)
    assert got["gradcam/found_rate"] == pytest.approx(2 / 3)
