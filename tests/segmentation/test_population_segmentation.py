"""The segmentation task's whole-set measure (``metrics_on="validation"``): over batches, the
sums give exactly the scalars the task's report gives on the same images."""

from __future__ import annotations

from cam_population import assert_same_scalars, whole_set_means

from lightning_gradcam.tasks.base import TaskOptions
from lightning_gradcam.tasks.segmentation import SegmentationTask

from .seg_nets import ChannelSegmenter, channel_images


def test_segmentation_batches_give_the_sample_reports_scalars():
    images, predicted = channel_images()
    masks = predicted.clone()
    masks[0, 12:15, 12:15] = 2  # a class the model does not predict there: no evidence
    methods = ("gradcam", "hirescam")
    task = SegmentationTask(TaskOptions(methods=methods))
    got = whole_set_means(
        task, ChannelSegmenter(), [(images[:1], masks[:1]), (images[1:], masks[1:])]
    )
    fixed = SegmentationTask(TaskOptions(methods=methods))
    samples = fixed.parse_batch((images, masks))
    report = fixed.report(fixed.explain(ChannelSegmenter(), samples), samples, 0, 0)
    want = {k: v for k, v in report.scalars.items() if "drift" not in k}
    assert_same_scalars(got, want)
    assert 0 < got["gradcam/no_evidence_rate"] < 1
