"""The layer ``SegmentationCAM(layer=None)`` explains: the last feature map before the
segmentation head, found from what the model library says first.

- torchvision FCN / DeepLabV3 / LR-ASPP: ``backbone`` is an ``IntermediateLayerGetter``
  whose ``return_layers`` name the feature map the head reads (``{"layer4": "out"}``,
  ``{"16": "out"}``; LR-ASPP reads ``"high"`` and ``"low"``: the deep one, ``"high"``). The
  getter itself returns a dict, so its child is hooked: ``backbone.layer4``, ``backbone.16``.
- Hugging Face ``...ForSemanticSegmentation``: the model is asked for its hidden states
  (``output_hidden_states=True`` for this one probing forward); the layer is the last module
  of the encoder (``model.base_model_prefix``, or ``backbone``) whose output is the last
  stage's feature map, ``segformer.stages.3``. Its layout comes from the hidden state:
  ``(B, C, h, w)`` as it is, or tokens ``(B, h*w, C)`` / channels-last ``(B, h, w, C)`` with
  the grid the model reported.
- Anything else: the last module with a spatial 4-D output that finishes before the final
  classifier starts, the classifier being the last layer with parameters of its own whose
  output has the logits' ``K`` channels (a 1x1 conv, usually): ``features`` for
  ``head(features(x))``, ``decoder`` for a segmentation_models_pytorch U-Net.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.capture import watch_outputs
from ..core.layers import PASS_THROUGH, LayerNotFoundError, named_layers, unwrap_model
from ..core.layouts import Layout
from .outputs import segmentation_logits

__all__ = ["find_segmentation_layer"]

# In the order torchvision's heads use them: FCN/DeepLabV3 read "out", LR-ASPP "high".
_TORCHVISION_KEYS = ("out", "high")


def _torchvision_layer(layers: dict[str, nn.Module]) -> str | None:
    from torchvision.models._utils import IntermediateLayerGetter

    for name, module in layers.items():
        if isinstance(module, IntermediateLayerGetter):
            returned = dict(module.return_layers)
            for key in _TORCHVISION_KEYS:
                child = next((k for k, v in returned.items() if v == key), None)
                if child is not None:
                    return f"{name}.{child}"
            return f"{name}.{list(returned)[-1]}"
    return None


def _hugging_face_model(network: nn.Module) -> tuple[str, nn.Module] | None:
    """``(name, module)`` of the first transformers ``PreTrainedModel`` (duck-typed: a
    ``config`` and a ``base_model_prefix``), the network itself being named ``""``."""
    candidates = [("", network), *named_layers(network).items()]
    for name, module in candidates:
        if hasattr(module, "config") and isinstance(
            getattr(module, "base_model_prefix", None), str
        ):
            return name, module
    return None


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _hugging_face_layer(
    network: nn.Module, run_forward: Callable[[], object]
) -> tuple[str, Layout] | None:
    found = _hugging_face_model(network)
    if found is None:
        return None
    prefix, model = found
    encoder_name = next(
        (
            n
            for n in (model.base_model_prefix, "backbone")
            if isinstance(getattr(model, n, None), nn.Module)
        ),
        None,
    )
    if encoder_name is None:
        return None
    encoder = getattr(model, encoder_name)
    outputs: dict[str, tuple[int, ...]] = {}  # in the order forwards finish
    reply: list[object] = []

    def ask_hidden_states(_module, args, kwargs):
        return args, {**kwargs, "output_hidden_states": True}

    def keep_reply(_module, _inputs, output):
        reply.append(output)

    def record(name: str, _module: nn.Module, output: object) -> None:
        if isinstance(output, torch.Tensor):
            outputs.pop(name, None)
            outputs[name] = tuple(output.shape)

    handles = [
        model.register_forward_pre_hook(ask_hidden_states, with_kwargs=True),
        model.register_forward_hook(keep_reply),
    ]
    try:
        watch_outputs({n: m for n, m in encoder.named_modules() if n}, run_forward, record)
    finally:
        for handle in handles:
            handle.remove()
    if not reply:
        return None
    states = getattr(reply[-1], "reshaped_hidden_states", None) or getattr(
        reply[-1], "hidden_states", None
    )
    maps = [s for s in states or () if isinstance(s, torch.Tensor) and s.dim() == 4]
    if not maps:
        return None
    batch, channels, h, w = maps[-1].shape
    readings = {
        (batch, channels, h, w): Layout("BCHW", (h, w), source="model: hidden_states"),
        (batch, h * w, channels): Layout("tokens", (h, w), source="model: hidden_states"),
        (batch, h, w, channels): Layout("BHWC", (h, w), source="model: hidden_states"),
    }
    for name in reversed(list(outputs)):
        if outputs[name] in readings:
            return _joined(prefix, _joined(encoder_name, name)), readings[outputs[name]]
    return None


def _last_feature_map(network: nn.Module, run_forward: Callable[[], object]) -> str:
    layers = named_layers(network)
    started: dict[str, int] = {}
    finished: dict[str, tuple[int, tuple[int, ...] | None]] = {}
    clock = [0]
    handles = []

    def make_hooks(name: str):
        def before(_module, _inputs):
            clock[0] += 1
            started[name] = clock[0]

        def after(_module, _inputs, output):
            clock[0] += 1
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            finished[name] = (clock[0], shape)

        return before, after

    try:
        for name, module in layers.items():
            before, after = make_hooks(name)
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        with torch.no_grad():
            classes = segmentation_logits(run_forward()).shape[1]
    finally:
        for handle in handles:
            handle.remove()

    def is_leaf_with_parameters(name: str) -> bool:
        module = layers[name]
        return not any(True for _ in module.children()) and any(
            True for _ in module.parameters(recurse=False)
        )

    by_finish = sorted(finished, key=lambda n: finished[n][0])
    leaves = [n for n in by_finish if is_leaf_with_parameters(n)]
    scoring = [n for n in leaves if (finished[n][1] or (0, 0))[1:2] == (classes,)]
    classifier = (scoring or leaves or [None])[-1]
    limit = started[classifier] if classifier is not None else float("inf")
    for name in reversed(by_finish):
        when, shape = finished[name]
        spatial = shape is not None and len(shape) == 4 and shape[-1] * shape[-2] > 1
        if when < limit and spatial and not isinstance(layers[name], PASS_THROUGH):
            return name
    raise LayerNotFoundError(
        f"{type(unwrap_model(network)).__name__} has no (B, C, h, w) feature map before its "
        "segmentation head; name the layer to explain with layer=..."
    )


def find_segmentation_layer(
    network: nn.Module, run_forward: Callable[[], object]
) -> tuple[str, Layout | None, str]:
    """``(layer name, layout or None, how it was chosen)`` for ``layer=None`` (module
    docstring); ``run_forward()`` runs the network once on a sample (under ``no_grad``).
    A ``None`` layout is left to ``core.layouts.detect_layout``."""
    network = unwrap_model(network)
    name = _torchvision_layer(named_layers(network))
    if name is not None:
        return name, None, "torchvision: the backbone's feature map the head reads"
    found = _hugging_face_layer(network, run_forward)
    if found is not None:
        return found[0], found[1], "Hugging Face: the encoder's last hidden state"
    return _last_feature_map(network, run_forward), None, "the last feature map before the head"
