"""DetectionTask (the callback's detection side) on real torchvision detectors.

Ground truth is built from the model's own detections (a found object, IoU 1, same class)
and a class the model does not have (a missed object), so every test is deterministic on a
randomly initialised detector.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_gradcam.core.drift import energy_in_boxes
from lightning_gradcam.core.render import draw_boxes, to_uint8_image
from lightning_gradcam.detection.shapes import shapes_detection_batch
from lightning_gradcam.tasks.base import TaskOptions
from lightning_gradcam.tasks.detection import (
    DETECTION_COLOR,
    DetectionSamples,
    DetectionTask,
    match_objects,
)

from .tiny import images, tiny_detector

METHODS = ("gradcam", "gradcam++")


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    return tiny_detector("faster_rcnn", seed=5)


def _batch(model: nn.Module):
    """Two images; per image one object = the model's own top detection, and on the first
    image a second object of class 99 that nothing detects."""
    batch = images(seed=2)
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    targets = []
    for index, out in enumerate(outputs):
        boxes, labels = out["boxes"][:1], out["labels"][:1]
        if index == 0:
            boxes = torch.cat([boxes, torch.tensor([[5.0, 5.0, 40.0, 40.0]])])
            labels = torch.cat([labels, torch.tensor([99])])
        targets.append({"boxes": boxes, "labels": labels})
    return batch, targets, outputs


def _task(**kwargs) -> DetectionTask:
    return DetectionTask(TaskOptions(methods=METHODS, max_image_size=None, **kwargs))


def test_match_objects_takes_the_best_scoring_overlap_of_the_same_class():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    labels = torch.tensor([1, 2])
    det_boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20, 20, 30, 30]]
    ).float()
    det_labels = torch.tensor([1, 1, 1, 1])  # the last one overlaps object 2 but is class 1
    det_scores = torch.tensor([0.5, 0.4, 0.9, 0.99])
    assert match_objects(gt, labels, det_boxes, det_labels, det_scores) == [2, None]


def test_report_explains_found_objects_and_says_missed(detector):
    batch, targets, outputs = _batch(detector)
    task = _task()
    samples = task.parse_batch((batch, targets))
    task.check_samples(samples)
    result = task.combine(
        [
            task.explain(detector, samples.slice(0, 1)),
            task.explain(detector, samples.slice(1, None)),
        ]
    )
    found, missed, second = result.objects[0][0], result.objects[0][1], result.objects[1][0]
    assert missed is None
    assert found.rank == 0 and second.rank == 0  # the model's own top detection
    assert found.score == float(outputs[0]["scores"][0])
    assert task.layer_name == "roi_heads.box_roi_pool"

    report = task.report(result, samples, step=10, epoch=0)
    tags = [tag for tag, _, _ in report.images]
    for method in METHODS:
        assert [t for t in tags if t.startswith(f"{method}/object_")] == [
            f"{method}/object_{n:02d}" for n in range(3)
        ]
        assert f"{method}/grid" in tags
        # energy_in_box is the mean over all GT objects of the share of the object's map in
        # its own box; the missed object counts 0 (found_rate says why).
        energy = [
            float(energy_in_boxes(found.maps[method][None], targets[0]["boxes"][:1])[0]),
            0.0,
            float(energy_in_boxes(second.maps[method][None], targets[1]["boxes"][:1])[0]),
        ]
        assert report.scalars[f"{method}/energy_in_box"] == pytest.approx(np.mean(energy), abs=1e-6)
        assert report.scalars[f"{method}/found_rate"] == pytest.approx(2 / 3)
        assert report.per_image[f"{method}/energy_in_box"] == pytest.approx(
            [energy[0] / 2, energy[2]]
        )
        assert f"{method}/drift_vs_prev" not in report.scalars  # first pass
    missed_tile = dict((t, i) for t, i, _ in report.images)["gradcam/object_01"]
    found_tile = dict((t, i) for t, i, _ in report.images)["gradcam/object_00"]
    # The missed object's tile is the input with its box, no colour map: said, not drawn.
    picture = draw_boxes(to_uint8_image(batch[0]), targets[0]["boxes"][1:])
    assert np.array_equal(missed_tile[: picture.shape[0]], picture)
    assert missed_tile.shape[0] > picture.shape[0]  # the caption band
    assert not np.array_equal(
        found_tile[: picture.shape[0]],
        draw_boxes(to_uint8_image(batch[0]), targets[0]["boxes"][:1]),
    )

    # The same chunks again (a batch pads its images to one size, which changes the maps).
    again = task.report(
        task.combine([task.explain(detector, samples.slice(i, i + 1)) for i in range(2)]),
        samples,
        step=20,
        epoch=1,
    )
    for method in METHODS:
        assert again.scalars[f"{method}/drift_vs_prev"] == pytest.approx(0.0, abs=1e-5)
        assert again.scalars[f"{method}/drift_vs_first"] == pytest.approx(0.0, abs=1e-5)
    strip = task.filmstrip("gradcam")
    assert strip.dtype == np.uint8 and strip.shape[2] == 3

    # Resuming: a new task given the state compares with the first pass at once.
    resumed = _task()
    resumed.load_state_dict(task.state_dict())
    parts = [resumed.explain(detector, samples.slice(i, i + 1)) for i in range(2)]
    first = resumed.report(resumed.combine(parts), samples, step=30, epoch=2)
    assert first.scalars["gradcam/drift_vs_first"] == pytest.approx(0.0, abs=1e-5)


class _Module(nn.Module):
    """A LightningModule-like holder of a detector (self.model)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)


def test_a_found_objects_tile_shows_the_detections_own_box(detector):
    batch, targets, _ = _batch(detector)
    targets = [{"boxes": t["boxes"][:1] + 4.0, "labels": t["labels"][:1]} for t in targets]
    task = _task()
    samples = task.parse_batch((batch, targets))
    result = task.explain(detector, samples)
    det = result.objects[0][0]
    assert det is not None  # shifted by 4 px, the object is still found (IoU >= 0.5)
    tile = dict((t, i) for t, i, _ in task.report(result, samples, 1, 0).images)
    tile = tile["gradcam/object_00"]
    x0, y0, x1, y1 = (int(round(float(v))) for v in det.box)
    gx0, gy0 = (int(round(float(v))) for v in targets[0]["boxes"][0, :2])
    # The detection's top edge, left of where the green ground-truth box crosses it.
    edge = tile[y0, x0 : min(gx0, x1)]
    assert len(edge) >= 3 and (edge == DETECTION_COLOR).all()
    assert (tile[gy0, gx0 + 1 : gx0 + 6] == (0, 255, 0)).all()


def test_recognises_torchvision_detectors_and_their_holders(detector):
    batch, targets = shapes_detection_batch(2, 64, seed=1)
    assert DetectionTask.recognises(detector, (batch, targets))
    assert DetectionTask.recognises(_Module(detector), (batch, targets))
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert not DetectionTask.recognises(
        classifier, (torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    )


def test_a_holder_takes_the_layer_by_its_full_name(detector):
    batch, targets, _ = _batch(detector)
    task = _task(layer="model.roi_heads.box_roi_pool")
    samples = task.parse_batch((batch, targets))
    result = task.explain(_Module(detector), samples)
    assert task.layer_name == "model.roi_heads.box_roi_pool"
    assert result.objects[0][0] is not None


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (torch.rand(2, 3, 32, 32), "got a batch of type Tensor"),
        ((torch.rand(2, 3, 32, 32), torch.tensor([0, 1])), "list of dicts"),
        (([torch.rand(3, 32, 32)], [{"labels": torch.tensor([1])}]), "list of dicts"),
        (([], []), "no images"),
        (
            ([torch.rand(3, 32, 32)] * 2, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}]),
            "2 images but 1 targets",
        ),
        (
            ([torch.rand(3, 32, 32)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}]),
            "no image of the batch has a ground-truth box",
        ),
        (
            ([torch.rand(3, 32, 32)], [{"boxes": torch.ones(2, 4), "labels": torch.ones(1)}]),
            "2 boxes but 1 labels",
        ),
    ],
)
def test_bad_batches_say_what_is_wrong(batch, message):
    with pytest.raises(ValueError, match=message):
        _task().parse_batch(batch)


def test_classifier_only_arguments_are_refused_for_detections():
    samples = DetectionSamples([torch.rand(3, 8, 8)], [torch.ones(1, 4)], [torch.ones(1).long()])
    # The task's own reading of the callback's options (the callback asks it when built
    # with task="detection", or at the first batch when it recognises a detector).
    with pytest.raises(ValueError, match="not measured for detections"):
        DetectionTask.check_faithfulness(("deletion",))
    with pytest.raises(ValueError, match="leave target='auto' for the detection task"):
        DetectionTask.check_target(2)
    assert DetectionTask.check_target("auto") == "auto"
    assert DetectionTask.check_faithfulness(()) == ()
    _task().check_samples(samples)  # the defaults pass


def test_samples_round_trip_and_digest():
    batch, targets = shapes_detection_batch(3, 48, seed=3)
    samples = _task().parse_batch((batch, targets))
    back = DetectionSamples.from_state(samples.to_state())
    assert back.digest() == samples.digest() and len(back) == 3
    assert (
        DetectionSamples.concat([samples.head(1), samples.slice(1, None)]).digest()
        == samples.digest()
    )
    other = _task().parse_batch(shapes_detection_batch(3, 48, seed=4))
    assert other.digest() != samples.digest()


class _ListOfDicts(nn.Module):
    """Not a torchvision detector, but returns what one returns."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, images):
        return [
            {
                "boxes": torch.zeros(0, 4),
                "labels": torch.zeros(0).long(),
                "scores": self.conv(i[None]).sum()[None][:0],
            }
            for i in images
        ]


def test_a_detection_output_is_recognised_and_a_non_torchvision_detector_refused():
    batch = shapes_detection_batch(2, 48, seed=5)
    network = _ListOfDicts()
    assert DetectionTask.recognises(network, batch)
    task = _task()
    with pytest.raises(TypeError, match="holds no torchvision detector"):
        task.explain(network, task.parse_batch(batch))
