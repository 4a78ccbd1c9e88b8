"""A model whose forward converts uint8 images itself is explained on its own input dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.core.render import to_uint8_image


class ScalesItself(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError("this pipeline takes uint8 images")
        x = x.float() / 255.0
        return self.head(self.features(x).mean((2, 3)))


def test_uint8_images_give_the_maps_of_their_float_reading():
    torch.manual_seed(0)
    model = ScalesItself()
    images = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    result = CAMEngine(model, layer="features", methods=("gradcam",)).explain(images, 1)
    # the same network on the float images it computes from
    float_model = nn.Sequential()
    float_model.features, float_model.head = model.features, model.head

    def reference(x):
        return model.head(model.features(x).mean((2, 3)))

    float_model.forward = reference
    expected = CAMEngine(float_model, layer="features", methods=("gradcam",)).explain(
        images.float() / 255.0, 1
    )
    torch.testing.assert_close(result.maps["gradcam"], expected.maps["gradcam"])
    # pictures read 0-255
    picture = to_uint8_image(images[0])
    np.testing.assert_array_equal(picture, images[0].permute(1, 2, 0).numpy())
    with pytest.raises(TypeError, match="uint8 images cannot carry.*float"):
        CAMEngine(model, layer="features", methods=("guided_backprop",)).explain(images, 1)
