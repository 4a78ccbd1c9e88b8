"""Pull-backs: per-detection gradients carried from a feature reader to image-level layers.

A two-stage detector's ROI head reads the image through its pooler; a one-stage detector's
head reads the per-level features. Gradients taken first where the detection's own row is
(the pooled row, or its level's head input) are carried upstream:

- :func:`pooler_pullback`: through the framework's pooler alone, given as a callable. The
  pooler is re-run on ``D`` copies of the features, copy ``j`` carrying detection ``j``'s
  image and pooling its one box (ROIAlign pools every box on its own, so that row is the one
  the detection was pooled from), and one backward gives all ``D`` gradients at the pooler's
  inputs; exact for any pooler type and level assignment.
- :func:`pull_back_to_layer`: from the reader's inputs to any layer upstream, by one batched
  (vmapped) backward of ``s_j = sum_l <input_l[img_j], g_jl>``, whose gradient at the layer is
  detection ``j``'s (the chain rule over every level the layer feeds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..gradients import GRADIENT_BUDGET, batched_vjp
from .graph import depends_on, is_clone_of, require_dependence

__all__ = ["Pool", "pooler_pullback", "pull_back_to_layer"]

Pool = Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], torch.Tensor]
"""``pool(features, boxes, images) -> (sum_i len(boxes[i]), C, ph, pw)``: the framework's
pooler on per-level features ``(N, C, h_l, w_l)`` and one ``(k_i, 4)`` box tensor per batch
row; ``images (N,)`` is the original image of every row (for per-image sizes)."""


def pooler_pullback(
    pool: Pool,
    row_grads: torch.Tensor,
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    image_of: torch.Tensor,
    levels: torch.Tensor | None = None,
) -> list[torch.Tensor | None]:
    """Gradients at the pooler's inputs from gradients at the pooled rows.

    Args:
        pool: the framework's pooler as a callable (:data:`Pool`).
        row_grads: ``(D, C, ph, pw)`` detection ``d``'s gradient at its pooled row.
        features: the pooler's per-level inputs ``(N, C, h_l, w_l)``, as recorded.
        boxes: ``(D, 4)`` the box each detection was pooled at (its proposal).
        image_of: ``(D,)`` the image of each detection.
        levels: ``(D,)`` the level the pooler reads each box from, if the side knows it:
            then only that level is copied per detection (the others are passed as
            broadcast NaN views, which must not be read: a RuntimeError if they are);
            None copies every level.

    Returns:
        Per level, ``(D, C, h_l, w_l)``: detection ``d``'s gradient at
        ``features[l][image_of[d]]`` (zeros at the levels its box was not pooled from), or
        None for a level no detection was pooled from.
    """
    feats = [f.detach() for f in features]
    count = len(boxes)
    out: list[torch.Tensor | None] = [None] * len(feats)
    image_of = image_of.to(feats[0].device)
    boxes = boxes.to(feats[0])
    groups = [(None, torch.arange(count, device=image_of.device))]
    if levels is not None:
        levels = levels.to(image_of.device)
        groups = [(int(v), torch.nonzero(levels == v).flatten()) for v in levels.unique()]
    for level, members in groups:
        read = range(len(feats)) if level is None else [level]
        per_copy = sum(feats[j][0].numel() for j in read)
        chunk = max(1, GRADIENT_BUDGET // max(1, per_copy))
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            images = image_of[part]
            copies = [
                f[images].requires_grad_()  # indexing copies
                if j in read
                # Not read: a NaN view (no copy), so that a box the pooler reads from another
                # level than ``levels`` says shows as NaN instead of a lost gradient.
                else f.new_full((1,) * f.dim(), float("nan")).expand(len(part), *f.shape[1:])
                for j, f in enumerate(feats)
            ]
            pooled = pool(copies, [box[None] for box in boxes[part]], images)
            if level is not None and not bool(torch.isfinite(pooled).all()):
                raise RuntimeError(
                    f"the pooler read other levels than level {level} for the boxes levels= "
                    "put there; pass the pooler's own level assignment, or levels=None"
                )
            leaves = [copies[j] for j in read]
            grads = torch.autograd.grad(
                pooled, leaves, grad_outputs=row_grads[part].to(pooled), allow_unused=True
            )
            for j, grad in zip(read, grads):
                if grad is not None:
                    if out[j] is None:
                        out[j] = feats[j].new_zeros((count, *feats[j].shape[1:]))
                    out[j][part] = grad
    return out


def pull_back_to_layer(
    name: str,
    activation: torch.Tensor,
    reader_inputs: Sequence[torch.Tensor],
    reader_grads: Sequence[torch.Tensor | None],
    image_of: torch.Tensor,
    targets: torch.Tensor | None,
    hint: str = "",
) -> torch.Tensor:
    """Each detection's gradient at an image-level layer: ``(D, *activation.shape[1:])``.

    Args:
        name: the layer (for errors).
        activation: its recorded output ``(N, ...)``.
        reader_inputs: the reader's per-level inputs ``(N, C, h_l, w_l)``.
        reader_grads: per level, ``(D, C, h_l, w_l)`` each detection's gradient at its image's
            row of that input, or None for a level no detection reads.
        image_of: ``(D,)`` the image of each detection.
        targets: ``(D,)`` the scalars, to refuse a layer they do not depend on; None where
            the reader's rows were recorded apart from the layer's graph (a captured
            pooler output): the reader's inputs are checked instead.

    A layer whose output is itself a reader input takes the gradient as it is; a layer
    upstream goes through one batched backward per level (a vectorised vector-Jacobian
    product of the reader input, each detection's gradient in its own image's slot), of the
    detections whose gradient at that level is not zero (chunked under the gradient budget),
    so that a detection goes back through the part of the graph it reads only.
    """
    if targets is not None:
        require_dependence(name, targets, activation, hint)
    elif not any(is_clone_of(r, activation) or depends_on(r, activation) for r in reader_inputs):
        require_dependence(name, reader_inputs[0], activation, hint)
    count = len(image_of)
    grad = activation.new_zeros((count, *activation.shape[1:]))
    image_of = image_of.to(activation.device)
    for reader_input, level_grads in zip(reader_inputs, reader_grads):
        if level_grads is None:
            continue
        if is_clone_of(reader_input, activation):
            grad += level_grads.to(grad.dtype)
            continue
        if not depends_on(reader_input, activation):
            continue  # this level does not see the layer: zero gradient
        # Only the detections that read this level go back through its part of the graph.
        rows = torch.nonzero(level_grads.flatten(1).any(dim=1)).flatten().to(grad.device)
        chunk = max(1, GRADIENT_BUDGET // max(1, activation.numel(), reader_input.numel()))
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            images = image_of[part]
            picked = torch.arange(len(part), device=grad.device)
            # Row k's gradient at the reader input: its own image's slot only. One vectorised
            # vector-Jacobian product over the rows (the reader input is not multiplied out).
            outputs = reader_input.new_zeros((len(part), *reader_input.shape))
            outputs[picked, images.to(outputs.device)] = level_grads[part].to(reader_input)
            batched = batched_vjp(reader_input, activation, outputs)
            grad[part] += batched[picked, images].to(grad)
    return grad
