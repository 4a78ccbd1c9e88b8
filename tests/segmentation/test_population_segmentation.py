"""The segmentation task's whole-set measure (``metrics_on="validation"``): over batches, the
sums give exactly the scalars the task's report gives on the same images."""

from __future__ import annotations

import math

from lightning_gradcam.core.population import MetricSums
from lightning_gradcam.tasks.base import TaskOptions
from lightning_gradcam.tasks.population import measure_for
from lightning_gradcam.tasks.segmentation import SegmentationTask

from .seg_nets import ChannelSegmenter, channel_images


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


def test_segmentation_batches_give_the_sample_reports_scalars():
    images, predicted = channel_images()
    masks = predicted.clone()
    masks[0, 12:15, 12:15] = 2  # a class the model does not predict there: no evidence
    methods = ("gradcam", "hirescam")
    task = SegmentationTask(TaskOptions(methods=methods))
    got = _sums(task, ChannelSegmenter(), [(images[:1], masks[:1]), (images[1:], masks[1:])])
    fixed = SegmentationTask(TaskOptions(methods=methods))
    samples = fixed.parse_batch((images, masks))
    report = fixed.report(fixed.explain(ChannelSegmenter(), samples), samples, 0, 0)
    want = {k: v for k, v in report.scalars.items() if "drift" not in k}
    _assert_same(got, want)
    assert 0 < got["gradcam/no_evidence_rate"] < 1
