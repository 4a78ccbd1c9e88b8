"""torchvision's one-stage classification heads, as the kernel's windowed head sees them.

``RetinaNetClassificationHead`` runs ``conv`` (four ``Conv2dNormActivation`` blocks, 3x3,
stride 1) and ``cls_logits`` (3x3) on each level's feature ``(N, 256, H, W)``; its output
``(N, A * K, H, W)`` is flattened to rows ``(h * W + w) * A + a``, class ``k`` in channel
``a * K + k``. That head has no GroupNorm, so a detection's gradient at the level's input is
computed on an 11x11 crop (``core.detect.window``). FCOS's and RetinaNet v2's heads have
GroupNorm: :func:`head_window` returns None for them, and their detections go back through
the whole level (``own_gradients``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.detect import level_input_gradients, local_radius

__all__ = ["HeadWindow", "head_window", "head_input_gradients"]


@dataclass(frozen=True)
class HeadWindow:
    """The classification head's modules in order, their receptive radius, anchors per
    location and the module whose per-level inputs are the head's (``head.conv``)."""

    modules: tuple[nn.Module, ...]
    radius: int
    anchors: int
    entry: nn.Module


def head_window(network: nn.Module) -> HeadWindow | None:
    """The window of a torchvision RetinaNet-style class head, or None where it cannot be
    windowed exactly (GroupNorm, a stride, a head of another shape)."""
    head = getattr(getattr(network, "head", None), "classification_head", None)
    conv, logits = getattr(head, "conv", None), getattr(head, "cls_logits", None)
    if not isinstance(conv, nn.Sequential) or not isinstance(logits, nn.Conv2d):
        return None
    modules = (*conv, logits)
    radius = local_radius(modules)
    anchors = getattr(head, "num_anchors", None)
    if radius is None or not isinstance(anchors, int) or logits.out_channels % anchors:
        return None
    return HeadWindow(modules, radius, anchors, conv)


def head_input_gradients(
    window: HeadWindow,
    level_inputs: Sequence[torch.Tensor],
    levels: Sequence[int],
    owners: Sequence[int],
    anchor_rows: Sequence[int],
    labels: Sequence[int],
    logits: torch.Tensor,
) -> list[torch.Tensor | None] | None:
    """Per level, each detection's gradient at that level's head input (see
    ``core.detect.level_input_gradients``), from its level, image, anchor row and class;
    ``logits`` ``(D,)`` are the recorded logits, checked against the recomputed ones."""
    classes = window.modules[-1].out_channels // window.anchors
    rows, cols, channels = [], [], []
    for level, row, label in zip(levels, anchor_rows, labels):
        width = level_inputs[level].shape[-1]
        position, anchor = divmod(int(row), window.anchors)
        y, x = divmod(position, width)
        rows.append(y)
        cols.append(x)
        channels.append(anchor * classes + int(label))
    return level_input_gradients(
        window.modules,
        window.radius,
        level_inputs,
        list(levels),
        list(owners),
        rows,
        cols,
        channels,
        expected=logits,
    )
