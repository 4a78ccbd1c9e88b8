"""Small segmenters for the segmentation tests: a hand-set one whose predictions are known
exactly, and a few-conv one trained in seconds on shapes scenes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_gradcam.core.synthetic import make_segmentation_shapes


class ChannelSegmenter(nn.Module):
    """Logits = ReLU(image): pixel p is predicted as its brightest channel. ``features`` is an
    identity 1x1 conv and a ReLU, ``head`` an identity 1x1 conv, so the layer explained holds
    the image itself and every map has a closed form."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU())
        self.head = nn.Conv2d(channels, channels, 1)
        with torch.no_grad():
            for conv in (self.features[0], self.head):
                conv.weight.copy_(torch.eye(channels)[:, :, None, None])
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def channel_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 16x16 images for ``ChannelSegmenter`` and their predicted class ids: image 0 is
    background (class 0) with one square of class 1; image 1 has a square of class 1 and a
    bar of class 2. Values vary inside each region, so the maps are not flat."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 16, generator=gen) * 0.2
    images[:, 0] += 0.5  # background wins where nothing else is brighter
    images[0, 1, 2:7, 3:9] += 1.0 + torch.rand(5, 6, generator=gen)
    images[1, 1, 8:14, 8:12] += 1.0 + torch.rand(6, 4, generator=gen)
    images[1, 2, 1:4, 1:15] += 1.0 + torch.rand(3, 14, generator=gen)
    return images, images.argmax(dim=1)


class TinySegmenter(nn.Module):
    """Four convs (the last two dilated) at half resolution, a 1x1 head, logits upsampled
    to the input size."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=4, dilation=4),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def train_tiny_segmenter(
    num_shapes: int = 2, epochs: int = 20, seed: int = 0, size: int = 32
) -> TinySegmenter:
    """A ``TinySegmenter`` trained (seconds, one core) on 256 scenes of up to two shapes."""
    torch.manual_seed(seed)
    data = make_segmentation_shapes(256, size, seed=seed, num_objects=2, num_classes=num_shapes)
    model = TinySegmenter(num_shapes + 1)
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(epochs):
        for start in range(0, len(data), 32):
            loss = F.cross_entropy(
                model(data.images[start : start + 32]), data.masks[start : start + 32]
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()
