"""SegmentationTask without the callback: batches, maps per ground-truth class, scalars,
pictures, drift and checkpoints, with golden values on a hand-set segmenter."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lightning_gradcam.tasks.base import TaskOptions
from lightning_gradcam.tasks.segmentation import SegmentationSamples, SegmentationTask

from .seg_nets import ChannelSegmenter, channel_images

METHODS = ("gradcam", "hirescam")


def _task(**options) -> SegmentationTask:
    return SegmentationTask(TaskOptions(methods=METHODS, **options))


def _samples(task: SegmentationTask, absent: bool = False) -> SegmentationSamples:
    images, predicted = channel_images()
    masks = predicted.clone()
    if absent:  # a ground-truth class 2 in image 0, where the model predicts none
        masks[0, 12:15, 12:15] = 2
    return task.parse_batch((images, masks))


def _pass(task, samples, step=0, epoch=0):
    result = task.explain(ChannelSegmenter(), samples)
    return task.report(result, samples, step=step, epoch=epoch)


def test_recognises_by_masks_or_by_output():
    images, predicted = channel_images()
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    assert SegmentationTask.recognises(classifier, (images, predicted))
    assert not SegmentationTask.recognises(classifier, (images, torch.tensor([0, 1])))
    assert not SegmentationTask.recognises(classifier, (images, predicted > 0))  # bool: objects
    assert SegmentationTask.recognises(ChannelSegmenter(), images)
    assert SegmentationTask.recognises(ChannelSegmenter(), {"image": images})


def test_bad_batches_are_refused_clearly():
    task = _task()
    images, predicted = channel_images()
    with pytest.raises(ValueError, match="holds no masks"):
        task.parse_batch((images, None))
    with pytest.raises(ValueError, match=r"masks must be \(2, 16, 16\)"):
        task.parse_batch((images, predicted[:, :8]))
    with pytest.raises(ValueError, match="integer class ids, got torch.bool"):
        task.parse_batch((images, predicted > 0))
    with pytest.raises(ValueError, match="integer class ids, got torch.float32"):
        task.parse_batch((images, predicted.float()))
    with pytest.raises(ValueError, match=r"must be \(images, masks\)"):
        task.parse_batch("images")
    samples = task.parse_batch({"images": images, "masks": predicted[:, None]})
    assert samples.masks.shape == (2, 16, 16) and samples.masks.dtype == torch.long
    with pytest.raises(ValueError, match="leave target='auto' for the segmentation task"):
        SegmentationTask.check_target(1)
    with pytest.raises(ValueError, match="nothing to explain"):
        task.check_samples(SegmentationSamples(images, torch.zeros(2, 16, 16, dtype=torch.long)))


def test_report_golden_scalars_and_tags():
    task = _task()
    samples = _samples(task)
    task.check_samples(samples)
    report = _pass(task, samples)
    assert task.layer_name == "features"
    # HiResCAM's map of class c is channel c inside the predicted region = the mask.
    assert report.scalars["hirescam/energy_in_mask"] == pytest.approx(1.0)
    assert report.scalars["hirescam/pointing_game"] == 1.0
    assert report.scalars["hirescam/no_evidence_rate"] == 0.0
    # Grad-CAM's is channel c everywhere: the mask holds only part of it.
    images, predicted = channel_images()
    expected = []
    for b, c in [(0, 1), (1, 1), (1, 2)]:
        cam = images[b, c] - images[b, c].min()
        expected.append(float(cam[predicted[b] == c].sum() / cam.sum()))
    assert report.scalars["gradcam/energy_in_mask"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert report.scalars["gradcam/class_02/energy_in_mask"] == pytest.approx(expected[2], 1e-4)
    assert report.per_image["gradcam/energy_in_mask"] == pytest.approx(
        [expected[0], (expected[1] + expected[2]) / 2], rel=1e-4
    )
    tags = [tag for tag, _, _ in report.images]
    for method in METHODS:
        for name in ("image_00_class_01", "image_01_class_01", "image_01_class_02", "grid"):
            assert f"{method}/{name}" in tags
    assert not any("class_00" in tag for tag in tags)  # the background is not explained
    assert report.summary["hirescam"]["energy_in_mask"] == pytest.approx(1.0)


def test_mask_outline_is_drawn():
    task = _task(max_image_size=None, alpha=0.0)
    samples = _samples(task)
    tile = dict((t, im) for t, im, _ in _pass(task, samples).images)["gradcam/image_00_class_01"]
    # alpha=0: the picture is the image, plus the white outline of the square at rows 2..6,
    # columns 3..8 (caption band below).
    assert (tile[2, 3:9] == 255).all() and (tile[2:7, 3] == 255).all()
    assert not (tile[4, 5] == 255).all()  # inside: the image, not the outline


def test_class_absent_from_prediction_is_marked_and_counted_as_zero():
    task = _task()
    samples = _samples(task, absent=True)
    report = _pass(task, samples)
    # Pairs: (0, 1), (0, 2) not predicted, (1, 1), (1, 2). The absent class's map has no
    # evidence: it puts nothing in its mask (0) and the rate says why.
    assert report.scalars["hirescam/no_evidence_rate"] == pytest.approx(0.25)
    assert report.scalars["hirescam/energy_in_mask"] == pytest.approx(0.75)
    assert report.scalars["hirescam/pointing_game"] == pytest.approx(0.75)
    assert report.scalars["hirescam/class_02/no_evidence_rate"] == pytest.approx(0.5)
    assert report.scalars["hirescam/class_02/energy_in_mask"] == pytest.approx(0.5)
    captions = {tag: text for tag, _, text in report.images}
    assert captions["hirescam/image_00_class_02"].startswith("class 2: not predicted")
    assert report.per_image["hirescam/energy_in_mask"] == pytest.approx([0.5, 1.0])


def test_drift_filmstrip_chunks_and_resume():
    task = _task(filmstrip_size=32)
    samples = _samples(task)
    first = _pass(task, samples, step=0, epoch=0)
    assert "gradcam/drift_vs_prev" not in first.scalars
    second = _pass(task, samples, step=5, epoch=1)
    assert second.scalars["gradcam/drift_vs_prev"] == pytest.approx(0.0, abs=1e-6)
    assert second.scalars["gradcam/class_01/drift_vs_first"] == pytest.approx(0.0, abs=1e-6)
    strip = task.filmstrip("gradcam")
    side = min(32, samples.images.shape[-1])  # thumbnails: filmstrip_size=32
    rows, columns = 3, 3  # three (image, class) pairs; the input, then two passes
    assert rows * side <= strip.shape[0]  # captions wrap: cells may be taller
    assert strip.shape[1] == columns * side + (columns - 1) * 2  # 2-px pads between cells

    parts = [task.explain(ChannelSegmenter(), samples.slice(i, i + 1)) for i in range(2)]
    whole = task.explain(ChannelSegmenter(), samples)
    joined = task.combine(parts)
    assert [[r.class_id for r in row] for row in joined] == [[1], [1, 2]]
    for a, b in zip(sum(joined, []), sum(whole, [])):
        torch.testing.assert_close(a.maps["gradcam"], b.maps["gradcam"])

    resumed = _task()
    resumed.load_state_dict(task.state_dict())
    again = _pass(resumed, SegmentationSamples.from_state(samples.to_state()))
    assert again.scalars["gradcam/drift_vs_first"] == pytest.approx(0.0, abs=1e-6)
    assert (
        samples.digest()
        == SegmentationSamples.concat([samples.head(1), samples.slice(1, None)]).digest()
    )


def test_gradcam_plus_plus_is_said_to_say_little_for_a_segmenter():
    with pytest.warns(
        UserWarning, match=r"Grad-CAM\+\+ on a segmenter .* methods=\('gradcam', 'hirescam'\)"
    ):
        SegmentationTask(TaskOptions(methods=("gradcam", "gradcam++")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SegmentationTask(TaskOptions(methods=("gradcam", "hirescam")))
