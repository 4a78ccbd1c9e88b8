"""Guided backpropagation (Springenberg et al., ICLR-W 2015, arXiv:1412.6806) and the
input-resolution half of guided Grad-CAM (Selvaraju et al. 2017).

Guided backpropagation replaces the backward of every ReLU ``y = max(x, 0)`` by
``dL/dx = relu(dL/dy) * [x > 0]``: only positive gradients through active units reach the
image. Guided Grad-CAM is the element-wise product of that image-sized gradient and the
upsampled Grad-CAM (or Grad-CAM++) map.

The ReLU is swapped while a forward runs inside ``guided_relus()``, a
``TorchFunctionMode``, so module ReLUs (``nn.ReLU``, ``nn.ReLU6``), functional ones
(``F.relu``, ``torch.relu``, ``Tensor.relu``) and their in-place forms are all covered
(densenet and inception call ``F.relu`` directly) without touching the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["guided_relus", "normalize_gradient_image"]


class _GuidedClamp(torch.autograd.Function):
    """``clamp(x, low, high)`` with the guided backward ``relu(g) * [low < x < high]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float | None) -> torch.Tensor:
        out = x.clamp(min=low, max=high)
        active = x > low if high is None else (x > low) & (x < high)
        ctx.save_for_backward(active)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (active,) = ctx.saved_tensors
        return grad.clamp(min=0) * active, None, None


_RELUS = {F.relu, torch.relu, torch.Tensor.relu}
_RELUS_INPLACE = {torch.relu_, torch.Tensor.relu_, getattr(F, "relu_", torch.relu_)}
_HARDTANHS = {F.hardtanh, F.relu6}
_HARDTANHS_INPLACE = {F.hardtanh_}


def _argument(args: tuple, kwargs: dict, index: int, name: str, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


class _GuidedMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS or func in _RELUS_INPLACE:
            x = args[0]
            inplace = func in _RELUS_INPLACE or _argument(args, kwargs, 1, "inplace", False)
            return _apply(x, 0.0, None, inplace)
        if func in _HARDTANHS or func in _HARDTANHS_INPLACE:
            x = args[0]
            if func is F.relu6:
                low, high = 0.0, 6.0
                inplace = _argument(args, kwargs, 1, "inplace", False)
            else:
                low = _argument(args, kwargs, 1, "min_val", -1.0)
                high = _argument(args, kwargs, 2, "max_val", 1.0)
                inplace = func in _HARDTANHS_INPLACE or _argument(args, kwargs, 3, "inplace", False)
            if low == 0.0:  # a ReLU6-like clamp; other hardtanh ranges are not ReLUs
                return _apply(x, 0.0, high, inplace)
        return func(*args, **kwargs)


def _apply(x: torch.Tensor, low: float, high: float | None, inplace: bool) -> torch.Tensor:
    out = _GuidedClamp.apply(x, low, high)
    if inplace:
        # Keep the in-place contract (callers may ignore the return value): copy the guided
        # result into x; autograd then routes x's gradient through the guided backward.
        return x.copy_(out)
    return out


@contextlib.contextmanager
def guided_relus() -> Iterator[None]:
    """Within the block, every ReLU form runs with the guided-backpropagation backward."""
    with _GuidedMode():
        yield


def normalize_gradient_image(gradient: torch.Tensor) -> torch.Tensor:
    """Display form of an image-shaped gradient ``(..., C, H, W)``, per image, in [0, 1].

    Centred at 0.5 with 0.1 per standard deviation, then clipped, the usual way of showing
    guided backpropagation so that positive and negative evidence are both visible.
    """
    g = gradient.float()
    mean = g.mean(dim=(-3, -2, -1), keepdim=True)
    std = g.std(dim=(-3, -2, -1), keepdim=True)
    return ((g - mean) / (std + 1e-7) * 0.1 + 0.5).clamp(0.0, 1.0)
