"""d(targets)/d(activations) with ``torch.autograd.grad``: parameters' ``.grad`` untouched."""

from __future__ import annotations

import warnings

import torch

__all__ = ["GRADIENT_BUDGET", "row_gradients", "batched_gradients", "batched_vjp"]

#: Elements of gradient one batched backward may produce (256 MB float32): the one memory
#: budget of every batched gradient (classification columns, detection rounds, pull-backs).
GRADIENT_BUDGET = 1 << 26


def _check_connected(scores: torch.Tensor) -> None:
    if not scores.requires_grad:
        raise RuntimeError(
            "the target scores do not depend on the captured layer (no gradient path): "
            "the layer may not have run in this forward, or a targets callable detached "
            "its output; choose a layer that the scores are computed from"
        )


def batched_gradients(
    scores: torch.Tensor, inputs: torch.Tensor, retain_graph: bool = False
) -> torch.Tensor:
    """Gradient of each of the ``N`` scalars in ``scores`` at ``inputs``: ``(N, *inputs.shape)``
    (:func:`batched_vjp` with the rows of the identity)."""
    scores = scores.reshape(-1)
    _check_connected(scores)
    count = scores.numel()
    if count == 0:
        return inputs.new_zeros((0, *inputs.shape))
    one_hot = torch.eye(count, dtype=scores.dtype, device=scores.device)
    return batched_vjp(scores, inputs, one_hot, retain_graph=retain_graph)


def batched_vjp(
    outputs: torch.Tensor,
    inputs: torch.Tensor,
    grad_outputs: torch.Tensor,
    retain_graph: bool = True,
) -> torch.Tensor:
    """``(K, *inputs.shape)``: for each of the ``K`` vectors ``grad_outputs[k]`` (shaped like
    ``outputs``), the vector-Jacobian product ``grad_outputs[k]^T d outputs / d inputs``.

    One vectorised backward (``is_grads_batched=True``, a vmap over the backward graph); if
    an op on the path has no batching rule, a loop of ``K`` backwards with one warning.
    """
    count = len(grad_outputs)
    if count == 0:
        return inputs.new_zeros((0, *inputs.shape))
    try:
        (grads,) = torch.autograd.grad(
            outputs,
            inputs,
            grad_outputs=grad_outputs,
            is_grads_batched=True,
            retain_graph=retain_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return grads
    except RuntimeError as error:  # an op on the path cannot be vmapped
        warnings.warn(
            f"batched gradients failed ({str(error).splitlines()[0]}); "
            f"falling back to {count} separate backward passes",
            RuntimeWarning,
            stacklevel=3,
        )
    grads = []
    for index in range(count):
        (grad,) = torch.autograd.grad(
            outputs,
            inputs,
            grad_outputs=grad_outputs[index],
            retain_graph=retain_graph or index < count - 1,
            allow_unused=True,
            materialize_grads=True,
        )
        grads.append(grad)
    return torch.stack(grads)


def row_gradients(scores: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """Gradients of ``scores (B, K)`` at ``activation (B, C, h, w)``: ``(B, K, C, h, w)``.

    Assumes row ``b`` of the scores depends on row ``b`` of the activation only (true for a
    classifier in eval mode: BatchNorm uses running statistics). Then the gradient of
    ``sum_b scores[b, k]`` at row ``b`` is ``d scores[b, k] / d activation[b]``, so one
    backward serves the whole batch for each ``k``; the ``K`` columns share one vectorised
    backward.
    """
    _check_connected(scores)
    batch, k = scores.shape
    if k == 1:
        (grad,) = torch.autograd.grad(
            scores.sum(), activation, allow_unused=True, materialize_grads=True
        )
        return grad[:, None]
    per_column = batched_gradients(scores.sum(dim=0), activation)  # (K, B, C, h, w)
    return per_column.transpose(0, 1)
