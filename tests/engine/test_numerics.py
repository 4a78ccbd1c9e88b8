"""Numbers that hold on every layer shape and scale: a flat layer map gives an all-zero
map (decided at the layer's resolution), and no method depends on the activations' scale."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.core.methods import BUILTIN_METHODS, get_method

FIVE = tuple(m for m in BUILTIN_METHODS if not get_method(m).guided)


@pytest.mark.parametrize("size", [(32, 32), (32, 40)])
@pytest.mark.parametrize("name, layer", [("resnet18", "layer4"), ("vgg11", "features")])
def test_flat_layer_maps_give_all_zero_maps(name, layer, size):
    """resnet18's layer4 is 1x1 (32x32) or 1x2 (32x40), vgg11's features 1x1: bilinear
    upsampling of a flat map leaves float32 jitter that min-max used to stretch to ~0.7."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    images = torch.rand(4, 3, *size)
    res = CAMEngine(model, layer=layer, methods=FIVE).explain(images)
    flat_seen = 0
    for method in FIVE:
        small = res.layer_maps[method]
        flat = (small.amax((-2, -1)) - small.amin((-2, -1))) <= 1e-7 * small.abs().amax((-2, -1))
        flat_seen += int(flat.sum())
        assert (res.maps[method][flat] == 0).all(), method
        assert torch.isfinite(res.maps[method]).all()
    if res.layer_maps["gradcam"].shape[-2:] == (1, 1):
        assert flat_seen == 4 * len(FIVE)


class Scaled(nn.Module):
    """resnet18 with ``layer3``'s output scaled by ``c`` and ``layer4``'s input by ``1/c``:
    the same function, activations at ``scale`` c times, gradients 1/c times."""

    def __init__(self, net: nn.Module, c: float):
        super().__init__()
        self.net, self.c = net, c
        self.scaled = nn.Identity()

    def forward(self, x):
        n = self.net
        x = n.layer3(n.layer2(n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x)))))))
        x = self.scaled(x * self.c) / self.c
        return n.fc(n.avgpool(n.layer4(x)).flatten(1))


def test_every_method_is_scale_free():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.rand(2, 3, 64, 64)
    reference = CAMEngine(Scaled(net, 1.0), layer="scaled", methods=FIVE).explain(images)
    for c in (1e-9, 1e-6, 1e-3, 1e3):
        res = CAMEngine(Scaled(net, c), layer="scaled", methods=FIVE).explain(images)
        for method in FIVE:
            torch.testing.assert_close(
                res.maps[method], reference.maps[method], atol=2e-3, rtol=0, msg=f"{method} c={c}"
            )


def test_xgradcam_matches_the_paper_formula_in_float64_on_mobilenet_v2():
    """Random-init mobilenet_v2 has tiny activations at ``features``; an absolute 1e-7 in
    XGrad-CAM's denominator used to dominate (correlation 0.72 with the formula)."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    images = torch.rand(2, 3, 160, 160)
    res = CAMEngine(model, layer="features", methods=("xgradcam",)).explain(images)

    double = torchvision.models.mobilenet_v2(num_classes=10).eval()
    double.load_state_dict(model.state_dict())
    double = double.double()
    captured = []
    handle = double.features.register_forward_hook(lambda _m, _i, out: captured.append(out))
    scores = double(images.double()).gather(1, res.class_ids)
    handle.remove()
    (grad,) = torch.autograd.grad(scores.sum(), captured[0])
    act = captured[0]
    total = act.sum((2, 3), keepdim=True)  # 0 for channels that ReLU6 switched off
    weights = torch.where(total != 0, (act * grad).sum((2, 3), keepdim=True) / total, 0.0)
    expected = torch.relu((weights * act).sum(1))  # (B, h, w)
    ours = res.layer_maps["xgradcam"][:, 0].double()
    assert (expected.flatten(1).std(1) > 0).all()  # a map with structure to compare
    for b in range(2):
        corr = torch.corrcoef(torch.stack([ours[b].flatten(), expected[b].flatten()]))[0, 1]
        assert corr > 0.999, f"image {b}: correlation {corr:.4f}"
