"""torchvision's one-stage classification heads, as the kernel's windowed head sees them.

``RetinaNetClassificationHead`` runs ``conv`` (four ``Conv2dNormActivation`` blocks, 3x3,
stride 1) and ``cls_logits`` (3x3) on each level's feature ``(N, 256, H, W)``; its output
``(N, A * K, H, W)`` is flattened to rows ``(h * W + w) * A + a``, class ``k`` in channel
``a * K + k``. That head has no GroupNorm, so a detection's gradient at the level's input is
computed on an 11x11 crop (``core.detect.window``). FCOS's and RetinaNet v2's heads have
GroupNorm: :func:`head_window` returns None for them, and their detections go back through
the whole level (``own_gradients``).

When the layer explained is upstream of the FPN, a level's window also takes in the FPN's
output convolution of that level (``fpn.layer_blocks[l]``, a 3x3 stride-1 convolution: a
13x13 crop of its input): the pull-back then starts from the FPN's inner feature, and the
dense backward through that 256-channel convolution at the level's full size, once per
detection, is cut to a crop as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.detect import depends_on, level_input_gradients, local_radius

__all__ = ["HeadWindow", "fpn_stems", "head_window", "head_input_gradients"]


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


def fpn_stems(network: nn.Module) -> tuple[nn.Module, ...]:
    """The FPN's per-level output convolutions (``backbone.fpn.layer_blocks``, P3 first)
    that can join a level's window; empty when there is no such FPN or one of them is not a
    stride-1 'same' convolution."""
    blocks = getattr(getattr(getattr(network, "backbone", None), "fpn", None), "layer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        return ()
    if any(local_radius([block]) is None for block in blocks):
        return ()
    return tuple(blocks)


def head_input_gradients(
    window: HeadWindow,
    level_inputs: Sequence[torch.Tensor],
    levels: Sequence[int],
    owners: Sequence[int],
    anchor_rows: Sequence[int],
    labels: Sequence[int],
    logits: torch.Tensor,
    stems: Sequence[nn.Module] = (),
    stem_inputs: Sequence[torch.Tensor | None] = (),
    activation: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]] | None:
    """Per level, the reader input and each detection's gradient at it (zero for the
    detections of other levels, None for a level none reads): the ``reader_inputs`` and
    ``reader_grads`` of ``core.detect.pull_back_to_layer``. The reader of level ``l`` is
    the head's input, or, where ``stems[l]`` ran on ``stem_inputs[l]`` and that input
    depends on ``activation`` (the layer is upstream of the FPN), the FPN's inner feature
    before that stem. ``logits`` ``(D,)`` are the recorded logits, checked against the
    recomputed ones (None on a mismatch: the caller's dense path)."""
    classes = window.modules[-1].out_channels // window.anchors
    rows, cols, channels = [], [], []
    for level, row, label in zip(levels, anchor_rows, labels):
        position, anchor = divmod(int(row), window.anchors)
        y, x = divmod(position, level_inputs[level].shape[-1])
        rows.append(y)
        cols.append(x)
        channels.append(anchor * classes + int(label))
    readers: list[torch.Tensor] = list(level_inputs)
    chains = [(window.modules, window.radius)] * len(level_inputs)
    for level in set(levels):
        stem_input = stem_inputs[level] if level < len(stem_inputs) else None
        if (
            stem_input is not None
            and level < len(stems)
            and activation is not None
            and stem_input.shape[-2:] == level_inputs[level].shape[-2:]
            and depends_on(stem_input, activation)
        ):
            stem = stems[level]
            chains[level] = ((stem, *window.modules), window.radius + local_radius([stem]))
            readers[level] = stem_input
    grads = level_input_gradients(
        chains, readers, list(levels), list(owners), rows, cols, channels, expected=logits
    )
    return None if grads is None else (readers, grads)
