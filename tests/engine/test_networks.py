"""The seed's eight torchvision classifiers, randomly initialised: default layer, finite maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.overrides import TorchFunctionMode

from lightning_gradcam import CAMEngine
from lightning_gradcam.core import guided as guided_mod

from .nets import modules_with_hooks

# name -> (input size, expected default layer, an explicit dotted layer and its map size)
NETWORKS = {
    "vgg16": (64, "features.29", ("features.29", 4)),
    "vgg19": (64, "features.35", None),
    "resnet50": (64, "layer4", ("layer4.2", 2)),
    "resnet101": (64, "layer4", None),
    "densenet121": (64, "features", None),
    "inception_v3": (299, "Mixed_7c", None),
    "mobilenet_v2": (64, "features", None),
    "shufflenet_v2_x1_0": (64, "conv5", None),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "inception_v3":  # init_weights=True draws from scipy's truncnorm: slow
        return torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    return getattr(torchvision.models, name)(weights=None)


class _ReluCounter(TorchFunctionMode):
    """Counts every ReLU-like call (module or functional, in place or not) in a forward."""

    FUNCS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FUNCS or (func is F.hardtanh and args[1:2] == (0.0,)):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_seed_network(name, monkeypatch):
    size, default_layer, explicit = NETWORKS[name]
    model = build(name)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    engine = CAMEngine(model, layer=None, methods=("gradcam", "gradcam++"))
    res = engine.explain(images)
    assert res.layer == default_layer
    assert res.class_ids.shape == (2, 1) and res.scores.shape == (2, 1)
    for method in ("gradcam", "gradcam++"):
        maps = res.maps[method]
        assert maps.shape == (2, 1, size, size) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        assert torch.isfinite(res.layer_maps[method]).all()
        # Min-max normalised: each map reaches 1 unless it is flat (random nets' maps can be
        # ~1e-9: inception_v3's are, so an absolute epsilon would flatten them to 0).
        peaks = maps.flatten(1).amax(1)
        flat = res.layer_maps[method].flatten(1).amax(1) == res.layer_maps[method].flatten(1).amin(
            1
        )
        assert ((peaks > 0.99) | flat).all()
    assert modules_with_hooks(model) == []

    if explicit is not None:
        layer, side = explicit
        res = CAMEngine(model, layer=layer, methods=("gradcam",)).explain(images)
        assert res.layer_maps["gradcam"].shape == (2, 1, side, side)
        assert torch.isfinite(res.maps["gradcam"]).all()

    if name in ("densenet121", "inception_v3"):
        # Both call F.relu directly, not nn.ReLU: every ReLU call must be guided.
        guided_calls = []
        real_apply = guided_mod._apply

        def counting_apply(*args):
            guided_calls.append(1)
            return real_apply(*args)

        monkeypatch.setattr(guided_mod, "_apply", counting_apply)
        small = images[:1] if size == 64 else images[:1, :, :96, :96]
        counter = _ReluCounter()
        model.eval()
        with torch.no_grad(), counter:
            model(small)
        with torch.no_grad(), guided_mod.guided_relus():
            model(small)
        assert counter.count > 50 and len(guided_calls) == counter.count
