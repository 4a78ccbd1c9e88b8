"""What timm says about its models' last feature map.

timm describes every model's feature stages: ``feature_info[-1]["module"]`` names the
module of the last one, ``output_fmt`` says whether stages are channels-last, and
``num_prefix_tokens`` how many class / distillation / register tokens precede the patch
tokens. ``forward_intermediates`` returns the stage outputs as ``(B, C, h, w)`` feature maps,
prefix tokens removed and channels first: the library's own reading of its layout, which
:mod:`lightning_gradcam.models.defaults` matches against the modules' outputs.

Duck-typed: nothing here imports timm.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["is_timm_model", "timm_references"]


def is_timm_model(model: nn.Module) -> bool:
    """A timm network (its class comes from ``timm`` and it has ``feature_info``), not one
    of timm's building blocks inside someone else's network."""
    return type(model).__module__.startswith("timm.") and hasattr(model, "feature_info")


def feature_modules(model: nn.Module) -> list[str]:
    """``feature_info``'s module names, last stage first (``[]`` where timm says none)."""
    info = getattr(model, "feature_info", None)
    names = []
    for entry in reversed(list(info or [])):
        name = entry.get("module") if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            names.append(name)
    return names


def timm_references(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The last two stage outputs timm's ``forward_intermediates`` gives for ``images``, last
    first, each ``(B, C, h, w)``; ``[]`` where the model has no such method or it fails on
    this input. Runs under ``no_grad``; the caller hooks the modules meanwhile."""
    method = getattr(model, "forward_intermediates", None)
    if method is None:
        return []
    try:
        with torch.no_grad():
            out = method(images, indices=2, intermediates_only=True)
    except (RuntimeError, ValueError, TypeError, AssertionError, NotImplementedError, IndexError):
        try:  # a single feature stage, or a method that takes no count
            with torch.no_grad():
                out = method(images, intermediates_only=True)
        except Exception:  # noqa: BLE001 - any failure means: timm cannot say here
            return []
    if isinstance(out, tuple):
        out = out[-1] if isinstance(out[-1], list) else list(out)
    maps = [t for t in out if isinstance(t, torch.Tensor) and t.dim() == 4]
    return maps[::-1][:2]
