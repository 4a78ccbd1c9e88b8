"""Helpers for the detectron2 tests: tiny seeded detectors (CPU, ResNet-18) and inputs."""

from __future__ import annotations

import contextlib
import warnings

import torch
from detectron2.modeling import build_model

import detectron2_hooks  # noqa: F401  (registers the adapters)
from detectron2_hooks.tiny import tiny_config
from lightning_gradcam.core.layers import resolve_layer

warnings.filterwarnings("ignore", category=UserWarning)

KINDS = ("c4", "fpn", "retinanet")


def build(kind: str, *, cam: bool = True, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_config(kind, cam=cam, **overrides)).eval()


def make_inputs(batch: int, seed: int = 1) -> list[dict]:
    """Random images with a few bright rectangles, 128x160 and 160x128."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [(128, 160), (160, 128)]
    inputs = []
    for index in range(batch):
        height, width = sizes[index % 2]
        image = torch.rand(3, height, width, generator=generator) * 120
        for _ in range(3):
            y, x = (int(v) for v in torch.randint(0, 90, (2,), generator=generator))
            image[:, y : y + 36, x : x + 30] += 120
        inputs.append({"image": image.clamp(0, 255)})
    return inputs


def zero_box_regression(model: torch.nn.Module) -> torch.nn.Module:
    """Zero the final box-regression layer, so every box is its proposal (or anchor)."""
    layer = (
        model.head.bbox_pred if hasattr(model, "head") else model.roi_heads.box_predictor.bbox_pred
    )
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return model


@contextlib.contextmanager
def record_outputs(module: torch.nn.Module):
    """Collect every output of ``module`` (a plain forward hook, removed on exit)."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


@contextlib.contextmanager
def recording(model, names):
    """Every call of each layer; consumers get a clone (as ActivationCapture does)."""
    records = {name: [] for name in names}
    handles = []

    def hook(name):
        def record(_module, _inputs, output):
            records[name].append(output)
            return output.clone()

        return record

    try:
        for name in names:
            handles.append(resolve_layer(model, name).register_forward_hook(hook(name)))
        yield records
    finally:
        for handle in handles:
            handle.remove()
