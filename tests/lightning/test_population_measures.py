"""Whole-set measures of the classification task (``metrics_on="validation"``): over batches, the sums give exactly what
the task's own report gives on the same images as fixed samples, maps without evidence and
missed objects counted as 0 alike; under inference mode too."""

from __future__ import annotations

import pytest
import torch
from cam_population import assert_same_scalars, whole_set_means
from torch import nn

from lightning_gradcam.lightning.population import ValidationMetrics
from lightning_gradcam.tasks.base import TaskOptions
from lightning_gradcam.tasks.classification import ClassificationTask
from lightning_gradcam.tasks.population import measure_for


def _classifier() -> nn.Module:
    """Class 2's weights are all negative: its Grad-CAM has no positive evidence."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    with torch.no_grad():
        net[6].weight[2] = -net[6].weight[2].abs() - 0.1
    return net


def _classification_data():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(10, 3, 16, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    boxes = torch.tensor([[2.0, 2.0, 10.0, 12.0]]).repeat(10, 1)
    return images, labels, boxes


def test_classification_batches_give_the_sample_reports_scalars():
    net = _classifier()
    images, labels, boxes = _classification_data()
    methods = ("gradcam", "gradcam++")
    task = ClassificationTask(TaskOptions(methods=methods, layer="2"))
    batches = [(images[a:b], labels[a:b], boxes[a:b]) for a, b in ((0, 4), (4, 8), (8, 10))]
    got = whole_set_means(task, net, batches)
    fixed = ClassificationTask(TaskOptions(methods=methods, layer="2"))
    samples = fixed.parse_batch((images, labels, boxes))
    want = fixed.report(fixed.explain(net, samples), samples, 0, 0).scalars
    assert_same_scalars(got, want)
    # Class 2 has no evidence: 3 maps of 10 count 0 energy and no hit.
    assert got["gradcam/no_evidence_rate"] == pytest.approx(0.3)


def test_a_batch_made_under_inference_mode_is_measured_the_same():
    net = _classifier()
    images, labels, boxes = _classification_data()
    task = ClassificationTask(TaskOptions(methods=("gradcam",), layer="2"))
    want = whole_set_means(task, net, [(images, labels, boxes)])
    with torch.inference_mode():
        batch = (images.clone(), labels.clone(), boxes.clone())
        got = whole_set_means(task, net, [batch])
    assert_same_scalars(got, want)


def test_merge_puts_the_whole_set_means_in_place_and_drops_the_samples_without_them():
    scalars = {"gradcam/energy_in_box": 0.1, "gradcam/drift_vs_prev": 0.2}
    means = {"gradcam/energy_in_box": 0.5, "gradcam/pointing_game": 1.0}
    assert ValidationMetrics.merge(scalars, means) == {
        "gradcam/energy_in_box": 0.5,
        "gradcam/pointing_game": 1.0,
        "gradcam/drift_vs_prev": 0.2,
    }
    assert ValidationMetrics.merge(scalars, None) == {"gradcam/drift_vs_prev": 0.2}


def test_a_task_without_a_whole_set_measure_is_refused_by_name():
    class Odd(ClassificationTask.__mro__[1]):  # CAMTask, not a built-in task
        name = "odd"
        recognises = parse_batch = explain = None

    with pytest.raises(ValueError, match="task 'odd' has no whole-epoch measure"):
        measure_for(Odd(TaskOptions(methods=("gradcam",))))


def test_region_sums_equal_energy_share_and_pointing_hits_bit_for_bit():
    from lightning_gradcam.core.drift import box_masks, energy_share, pointing_hits
    from lightning_gradcam.tasks.population import _region_sums

    g = torch.Generator().manual_seed(3)
    maps = torch.rand(12, 20, 24, generator=g)
    maps[0] = 0.0  # no maximum to point with
    maps[1] = 0.5  # a tie everywhere
    maps[2, 3, 4] = float("nan")
    maps[3] -= 0.7  # negative values count as 0
    boxes = torch.rand(12, 4, generator=g) * 20
    boxes[:, 2:] += boxes[:, :2]
    boxes[4] = torch.tensor([5.0, 5.0, 4.0, 4.0])  # an empty region
    regions = box_masks(boxes, (20, 24))
    loop = torch.stack([box_masks([b[None]], (20, 24))[0] for b in boxes])
    assert torch.equal(regions, loop)  # one box per map, vectorised: the per-box masks
    evidence = torch.ones(12, dtype=torch.bool)
    evidence[5] = False
    got = _region_sums(maps, regions, evidence)
    share = torch.where(evidence, energy_share(maps, regions).double(), 0.0)
    hits = pointing_hits(maps, regions) & evidence
    assert got == {
        "energy_sum": float(share.sum()),
        "hits": float(hits.sum()),
        "maps": 12.0,
        "no_evidence": 1.0,
    }
