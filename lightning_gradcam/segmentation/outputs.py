"""Read a segmenter's output as per-pixel class logits ``(B, K, h, w)``, or refuse.

Three forms are recognised:

- torchvision FCN / DeepLabV3 / LR-ASPP: a dict ``{"out": (B, K, H, W), "aux": ...}``; only
  ``"out"`` is the model's prediction (``"aux"`` is a training-time auxiliary head);
- Hugging Face ``...ForSemanticSegmentation``: an output object whose ``logits`` are
  ``(B, K, h, w)``, often at a fraction (1/4 for SegFormer) of the input resolution;
- a plain ``(B, K, h, w)`` tensor (segmentation_models_pytorch, hand-written networks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["segmentation_logits", "looks_like_segmentation"]


def _candidate(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "out" in output:
        return output["out"]
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is not None:
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def looks_like_segmentation(output: Any) -> bool:
    """Whether ``output`` holds ``(B, K, h, w)`` floating-point logits with ``K >= 2`` and a
    spatial extent (a classifier's ``(B, K)`` does not)."""
    logits = _candidate(output)
    return (
        isinstance(logits, torch.Tensor)
        and logits.dim() == 4
        and logits.is_floating_point()
        and logits.shape[1] >= 2
        and logits.shape[-1] * logits.shape[-2] > 1
    )


def segmentation_logits(output: Any) -> torch.Tensor:
    """The ``(B, K, h, w)`` class logits in ``output`` (module docstring).

    Raises:
        ValueError: ``output`` holds no such tensor; the message says what was found.
    """
    logits = _candidate(output)
    if looks_like_segmentation(output):
        return logits
    if isinstance(logits, torch.Tensor):
        found = f"a tensor of shape {tuple(logits.shape)} ({logits.dtype})"
    elif isinstance(output, Mapping):
        found = f"a mapping with keys {list(output)}"
    else:
        found = type(output).__name__
    raise ValueError(
        f"expected segmentation logits (B, K, h, w) with K >= 2 classes: a tensor, a dict "
        f"with 'out' (torchvision) or an output with .logits (Hugging Face); the model "
        f"returned {found}"
    )
