"""Windowed head gradients: a dense head's per-detection gradient at its input, on a crop.

A one-stage head (RetinaNet's classification subnet: four 3x3 convolutions and the 3x3
class-logit convolution, all stride 1) computes the logit at location ``(y, x)`` from a
``(2r + 1) x (2r + 1)`` window of its input, ``r`` being the sum of the convolutions' radii
(5 for RetinaNet). So the gradient of one detection's logit at the head input is zero outside
that window, and a dense backward through the whole level (a 32x40 P3 for a 320-px image)
computes mostly zeros, once per detection. Here the head is re-run on one crop per detection,
``(D, C, 2r + 1, 2r + 1)``, and one backward of the sum of the ``D`` centre logits gives every
detection its own gradient (the crops are independent rows).

Exact, not approximate: the crop is cut from the input zero-padded by ``r``, and after every
module the positions outside the feature map are set to zero, which is what each convolution
of the full head sees there (its zero padding). Inside the crop, a convolution's own padding
at the crop edge is wrong, but the error moves one pixel inwards per convolution and never
reaches the centre. That holds for convolutions and pointwise modules only (BatchNorm in eval
mode, activations): :func:`local_radius` says whether a head is such a chain, and a head with
GroupNorm (FCOS, RetinaNet v2), whose statistics span the whole level, is not.

The gradients at the head input are then carried to an upstream layer by the kernel's
:func:`~lightning_gradcam.core.detect.pullback.pull_back_to_layer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "level_input_gradients",
    "local_radius",
    "receptive_radius",
    "windowed_head_gradients",
]

#: Modules that act on each position alone (in eval mode for the norms).
_POINTWISE = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Dropout,
)
_BATCH_NORMS = (nn.BatchNorm2d,)
#: Frozen batch norms of torchvision (``torchvision.ops.misc``) and detectron2 (``layers``),
#: told by name so that core imports neither.
_FROZEN_NORMS = ("FrozenBatchNorm2d",)


def _pointwise(module: nn.Module | None) -> bool:
    if module is None or isinstance(module, _POINTWISE):
        return True
    if isinstance(module, _BATCH_NORMS):
        return not module.training
    return type(module).__name__ in _FROZEN_NORMS


def _conv_radius(conv: nn.Conv2d) -> int | None:
    """The radius of a 'same' stride-1 zero-padded convolution, else None."""
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    if (
        conv.stride != (1, 1)
        or conv.padding_mode != "zeros"
        or kh != kw
        or dh != dw
        or kh % 2 == 0
        or conv.padding != (dh * (kh - 1) // 2,) * 2
    ):
        return None
    # detectron2's Conv2d applies its own norm and activation after the convolution.
    extras = [getattr(conv, "norm", None), getattr(conv, "activation", None)]
    for extra in extras:
        if extra is not None and not (
            _pointwise(extra) if isinstance(extra, nn.Module) else extra in (F.relu, torch.relu)
        ):
            return None
    return dh * (kh - 1) // 2


def _module_radius(module: nn.Module) -> int | None:
    if isinstance(module, nn.Conv2d):
        return _conv_radius(module)
    if _pointwise(module):
        return 0
    if isinstance(module, nn.Sequential):
        # One convolution, first, then pointwise modules: masking after the whole block is
        # then what its consumer's padding sees.
        children = list(module)
        radii = [_module_radius(child) for child in children]
        if any(r is None for r in radii):
            return None
        if any(r for r in radii[1:]) or any(isinstance(c, nn.Sequential) for c in children):
            return None
        return radii[0] if radii else 0
    return None


def local_radius(modules: Sequence[nn.Module]) -> int | None:
    """The receptive radius ``r`` of a chain of modules applied one after the other, when
    each is a stride-1 'same' zero-padded convolution (optionally followed, in an
    ``nn.Sequential``, by pointwise modules) or a pointwise module; None otherwise (a norm
    over the whole map, a stride, an unknown module): then the head cannot be windowed."""
    total = 0
    for module in modules:
        radius = _module_radius(module)
        if radius is None:
            return None
        total += radius
    return total


def receptive_radius(module: nn.Module) -> int | None:
    """The receptive radius, in cells, of ``module`` when each module in it is a 'same'
    stride-1 zero-padded convolution or pointwise, whatever the nesting (Ultralytics' ``Conv``
    is a plain ``Module`` holding ``conv``, ``bn``, ``act``): the sum of the convolutions'
    radii; None otherwise.

    Enough to tell which outputs read disjoint windows of the input (and so can share one
    backward). Whether a chain can be re-run on crops, with masking, is
    :func:`local_radius`'s question, which is stricter about the nesting.
    """
    if isinstance(module, nn.Conv2d):  # detectron2's carries its norm as a child
        return _conv_radius(module)
    children = list(module.children())
    if not children:
        return 0 if _pointwise(module) else None
    total = 0
    for child in children:
        radius = receptive_radius(child)
        if radius is None:
            return None
        total += radius
    return total


def windowed_head_gradients(
    modules: Sequence[nn.Module],
    radius: int,
    features: torch.Tensor,
    owners: Sequence[int],
    rows: Sequence[int],
    cols: Sequence[int],
    channels: Sequence[int],
    expected: torch.Tensor | None = None,
    tolerance: float = 1e-4,
) -> torch.Tensor | None:
    """Each detection's gradient at the head input: ``(D, C, H, W)``.

    Detection ``d``'s scalar is channel ``channels[d]`` at ``(rows[d], cols[d])`` of the
    output of ``modules`` (applied in order, :func:`local_radius` gives ``radius``) on
    ``features[owners[d]]``, ``features`` being the level's head input ``(N, C, H, W)``.
    ``expected``: the ``(D,)`` scalars as the full head computed them; when a recomputed one
    differs by more than ``tolerance`` (relative), the head is not what its modules say (a
    custom forward) and None is returned, for the caller's dense backward.
    """
    count = len(owners)
    size = 2 * radius + 1
    source = features.detach()
    padded = F.pad(source, (radius,) * 4)
    inside = F.pad(source.new_ones((1, 1, *source.shape[-2:])), (radius,) * 4)
    crops, masks = [], []
    for owner, y, x in zip(owners, rows, cols):
        crops.append(padded[owner, :, y : y + size, x : x + size])
        masks.append(inside[0, :, y : y + size, x : x + size])
    crop = torch.stack(crops).requires_grad_()
    mask = torch.stack(masks)
    with torch.enable_grad():
        out = crop
        for module in modules:
            out = module(out) * mask
        picked = out[torch.arange(count), torch.as_tensor(list(channels)), radius, radius]
        if expected is not None:
            reference = expected.detach().to(picked)
            gap = (picked.detach() - reference).abs()
            if bool((gap > tolerance * (1 + reference.abs())).any()):
                return None
        (grad,) = torch.autograd.grad(picked.sum(), crop)
    full = source.new_zeros((count, source.shape[1], *padded.shape[-2:]))
    for d, (y, x) in enumerate(zip(rows, cols)):
        full[d, :, y : y + size, x : x + size] = grad[d]
    height, width = source.shape[-2:]
    return full[:, :, radius : radius + height, radius : radius + width]


def level_input_gradients(
    chains: Sequence[tuple[Sequence[nn.Module], int]],
    level_inputs: Sequence[torch.Tensor],
    levels: Sequence[int],
    owners: Sequence[int],
    rows: Sequence[int],
    cols: Sequence[int],
    channels: Sequence[int],
    expected: torch.Tensor | None = None,
) -> list[torch.Tensor | None] | None:
    """Per level, every detection's gradient at that level's input ``(D, C, h_l, w_l)``
    (zero for the detections of other levels; None for a level none reads): the
    ``reader_grads`` of :func:`~lightning_gradcam.core.detect.pullback.pull_back_to_layer`.
    ``chains[l]`` is level ``l``'s ``(modules, radius)`` (:func:`local_radius`), run on
    ``level_inputs[l]``; detection ``d`` is at ``levels[d]``, image ``owners[d]``, position
    ``(rows[d], cols[d])``, output channel ``channels[d]``. None when a level's recomputed
    scalars differ from ``expected`` (see :func:`windowed_head_gradients`)."""
    count = len(levels)
    out: list[torch.Tensor | None] = [None] * len(level_inputs)
    for level in sorted(set(levels)):
        idx = [d for d in range(count) if levels[d] == level]
        modules, radius = chains[level]
        grads = windowed_head_gradients(
            modules,
            radius,
            level_inputs[level],
            [owners[d] for d in idx],
            [rows[d] for d in idx],
            [cols[d] for d in idx],
            [channels[d] for d in idx],
            None if expected is None else expected[idx],
        )
        if grads is None:
            return None
        full = grads.new_zeros((count, *grads.shape[1:]))
        full[idx] = grads
        out[level] = full
    return out
