"""The fallback default layer: shapes and module names, for models no library describes.

Models from timm, Hugging Face transformers and torchvision get their default from the
library's own metadata (``lightning_gradcam.models.defaults``); this module is what is left
for a user's own network. It runs one forward with hooks on every submodule and reads the
order in which their forwards finish and their output shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .capture import watch_outputs
from .layers import PASS_THROUGH, LayerNotFoundError, layer_context, named_layers, unwrap_model
from .layouts import LayoutError, detect_layout

__all__ = ["default_layer_candidates", "find_default_layer", "is_transformer_block"]

# A transformer block: an attention child and a first norm before it (timm, transformers,
# torchvision, detectron2's ViTDet).
_ATTENTION_CHILDREN = ("attn", "attention", "self_attention", "self_attn")
_FIRST_NORMS = ("norm1", "layernorm_before", "ln_1", "ln1")


def is_transformer_block(block: nn.Module) -> bool:
    """Whether ``block`` has an attention child and a first norm (a pre-norm transformer
    block as timm, transformers, torchvision and detectron2 write them)."""
    children = dict(block.named_children())
    return any(a in children for a in _ATTENTION_CHILDREN) and any(
        n in children for n in _FIRST_NORMS
    )


def _record_shapes(
    layers: dict[str, nn.Module], run_forward: Callable[[], object]
) -> dict[str, tuple[int, ...] | None]:
    outputs: dict[str, tuple[int, ...] | None] = {}  # in the order forwards finish

    def record(name: str, _module: nn.Module, output: object) -> None:
        outputs.pop(name, None)
        outputs[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None

    watch_outputs(layers, run_forward, record)
    return outputs


def default_layer_candidates(
    model: nn.Module, run_forward: Callable[[], object], input_size: tuple[int, int]
) -> list[str]:
    """Layers ``layer=None`` may explain, best first, found during one ``run_forward()``
    (under no_grad). The caller takes the first whose spatial positions the scores reach.

    - ViT-like (transformer blocks at one token resolution): the last block's output, then
      the one before it. A class-token head reads only the class token of the last block's
      output, so its other tokens get no gradient; the block before feeds the last block's
      attention, through which every token reaches the class token.
    - Swin-like (blocks at falling resolutions): the last stage (``layers.3``), or, where
      stages return tuples, the last feature map with a layout.
    - Otherwise (CNNs): the last spatial 4-D output (a ``Sequential`` stage rather than its
      last ReLU, as in :func:`~lightning_gradcam.core.layers.find_last_4d_layer`).

    Never the patch embedding when a later layer has a spatial layout.

    Raises:
        LayerNotFoundError: no layer with a spatial layout, or token outputs after the last
            4-D layer that cannot be told apart (name the layer with ``layer=...``).
    """
    layers = named_layers(model)
    outputs = _record_shapes(layers, run_forward)

    def fits(name: str) -> bool:
        shape = outputs.get(name)
        if shape is None or len(shape) not in (3, 4) or isinstance(layers[name], PASS_THROUGH):
            return False
        if (shape[1] if len(shape) == 3 else shape[-1] * shape[-2]) <= 1:
            return False
        layer, owners, parent = layer_context(model, name, layers)
        try:
            detect_layout(
                torch.empty(shape, device="meta"), name, input_size, layer, owners, parent
            )
        except LayoutError:
            return False
        return True

    blocks = [n for n in outputs if is_transformer_block(layers[n]) and fits(n)]
    if blocks:
        if outputs[blocks[0]] == outputs[blocks[-1]]:
            return blocks[::-1][:2]  # ViT-like
        stage = _outermost_same_output(blocks[-1], outputs, layers)
        if stage is not None and fits(stage):
            return [stage]  # Swin-like
        spatial = [n for n in outputs if fits(n)]
        if spatial:
            return [spatial[-1]]
    order = [
        n
        for n, shape in outputs.items()
        if shape is not None
        and len(shape) == 4
        and shape[-1] * shape[-2] > 1
        and not isinstance(layers[n], PASS_THROUGH)
    ]
    later_tokens = [
        n
        for n in list(outputs)[list(outputs).index(order[-1]) + 1 if order else 0 :]
        if outputs[n] is not None and len(outputs[n]) == 3 and fits(n)
    ]
    if later_tokens:
        raise LayerNotFoundError(
            f"{type(unwrap_model(model)).__name__} looks like a transformer whose blocks are not "
            f"recognised (token outputs such as {later_tokens[-1]!r} follow the last 4-D layer "
            f"{order[-1] if order else None!r}); name the layer to explain with layer=..., "
            "e.g. the output of the last transformer block"
        )
    if not order:
        raise LayerNotFoundError(
            f"{type(unwrap_model(model)).__name__} has no submodule with a 4-D output "
            "(B,C,h,w) or (B,h,w,C), nor tokens (B,P+h*w,C); name the layer to explain "
            "explicitly with layer=..."
        )
    return [order[-1]]


def find_default_layer(
    model: nn.Module, run_forward: Callable[[], object], input_size: tuple[int, int]
) -> str:
    """The first of :func:`default_layer_candidates` (no gradient check)."""
    return default_layer_candidates(model, run_forward, input_size)[0]


def _outermost_same_output(
    name: str, outputs: dict[str, tuple[int, ...] | None], layers: dict[str, nn.Module]
) -> str | None:
    """The outermost ancestor-or-self of ``name`` with the same output, stopping below a
    container of stages (whose children's outputs differ): ``layers.3``, not ``layers``."""
    shape = outputs.get(name)
    if shape is None:
        return None
    while "." in name:
        parent = name.rsplit(".", 1)[0]
        if outputs.get(parent) != shape:
            break
        child_shapes = {
            outputs.get(f"{parent}.{c}") for c, _ in layers[parent].named_children()
        } - {None}
        if len(child_shapes) > 1:
            break
        name = parent
    return name
