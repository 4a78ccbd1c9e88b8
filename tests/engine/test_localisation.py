"""A small CNN trained for seconds on synthetic shapes: its maps must point at the object."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.synthetic import SHAPE_NAMES, make_shapes

from .nets import train_on_shapes

STEPS, BATCH = 80, 32


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ShapesNet(nn.Module):
    """Stride-1 convolutions and 2x2 max pools (cell centres line up with the bilinear
    upsampling's), 8x8 features with a receptive field (38 px) that covers an object,
    global average pooling and a linear head."""

    def __init__(self, num_classes: int = len(SHAPE_NAMES)):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 8),
            nn.MaxPool2d(2),
            conv_bn_relu(8, 16),
            nn.MaxPool2d(2),
            conv_bn_relu(16, 32),
            nn.MaxPool2d(2),
            conv_bn_relu(32, 64),
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)  # the initial weights and the batch order
    return train_on_shapes(ShapesNet(), STEPS, BATCH, size=64)


def test_map_peaks_inside_the_deciding_object(trained):
    model = trained
    held_out = make_shapes(100, size=64, seed=2)
    with torch.no_grad():
        accuracy = (model(held_out.images).argmax(1) == held_out.labels).float().mean()
    assert accuracy >= 0.9, f"the model did not learn the task (accuracy {accuracy:.2f})"
    res = CAMEngine(model, layer="features", methods=("gradcam", "gradcam++")).explain(
        held_out.images, held_out.labels
    )
    boxes = held_out.boxes
    for method in ("gradcam", "gradcam++"):
        maps = res.maps[method][:, 0]  # (100, 64, 64)
        peak = maps.flatten(1).argmax(dim=1)
        y, x = peak // 64, peak % 64
        inside = (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])
        # Seeds 0-7 (scripts/seed_margins.py): worst 0.97 (seed 7), accuracy 1.0 for all; a
        # random-init model gives 0.30 (gradcam) / 0.56 (gradcam++): 0.8 is about halfway
        # from 0.56 to the worst seed, so it fails on an untrained model on any CPU.
        assert inside.float().mean() >= 0.8, (
            f"{method}: peak inside the box for {int(inside.sum())}/100"
        )


def test_maps_of_a_shuffled_head_do_not_localise(trained):
    """Control: the same maps with the image rows permuted lose the objects, so the
    localisation above is the engine's doing, not the data's."""
    model = trained
    held_out = make_shapes(100, size=64, seed=2)
    res = CAMEngine(model, layer="features", methods=("gradcam",)).explain(
        held_out.images, held_out.labels
    )
    maps = res.maps["gradcam"][:, 0].roll(1, dims=0)  # each image gets its neighbour's map
    peak = maps.flatten(1).argmax(dim=1)
    y, x = peak // 64, peak % 64
    boxes = held_out.boxes
    inside = (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])
    # Seeds 0-7: the shuffled maps' peaks land inside 0.22-0.27 (the trained maps 0.97-1.0).
    assert inside.float().mean() < 0.6
