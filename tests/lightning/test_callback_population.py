"""Population sums (issue 28, first increment): the means equal a computation by hand."""

import math

import torch
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.core.drift import box_masks, energy_share, pointing_hits
from lightning_gradcam.lightning.population import MetricSums, measure_classification


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def test_sums_over_batches_equal_the_means_over_all_images():
    net = _net()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(10, 3, 16, 16, generator=g)
    labels = torch.randint(0, 3, (10,), generator=g)
    boxes = torch.tensor([[2.0, 2.0, 10.0, 12.0]]).repeat(10, 1)
    sums = MetricSums(("gradcam",))
    for start in (0, 4, 8):  # three uneven batches
        stop = min(start + 4, 10)
        sums.add(
            measure_classification(
                net, images[start:stop], labels[start:stop], boxes=boxes[start:stop], layer="2"
            )
        )
    sums.reduce()
    got = sums.means()
    res = CAMEngine(net, layer="2", methods=("gradcam",)).explain(images, targets=labels)
    maps = res.maps["gradcam"][:, 0].float()
    keep = res.layer_maps["gradcam"][:, 0].flatten(1).amax(1) > 0
    region = box_masks(boxes, (16, 16))
    assert keep.any()
    assert math.isclose(
        got["gradcam/energy_in_box"], float(energy_share(maps, region)[keep].mean()), rel_tol=1e-6
    )
    assert math.isclose(
        got["gradcam/pointing_game"],
        float(pointing_hits(maps, region)[keep].float().mean()),
        rel_tol=1e-6,
    )
    assert math.isclose(got["gradcam/no_evidence_rate"], float((~keep).float().mean()))


def test_keys_are_stable_when_nothing_was_counted():
    sums = MetricSums(("gradcam", "gradcam++"))
    assert set(sums.means()) == {
        f"{m}/{k}"
        for m in ("gradcam", "gradcam++")
        for k in ("energy_in_box", "pointing_game", "no_evidence_rate")
    }
