"""Per-row gradients: each detection's gradient at its own row of a tensor, in rounds.

Rows of a detector's tensors are independent in eval mode (proposal rows in an ROI head,
images in a backbone or dense head: BatchNorm uses running statistics), so targets whose
rows differ share one backward of their sum. Target ``d`` depends on row ``owners[d]`` only;
the ``k``-th target of every row goes into round ``k``; one backward of each round's sum
gives every member its own gradient, and the rounds share one batched backward
(``is_grads_batched``), in chunks that keep the gradient under
:data:`~lightning_gradcam.core.gradients.GRADIENT_BUDGET`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..gradients import GRADIENT_BUDGET

__all__ = ["own_gradients", "level_gradients"]


def _round_of(owners: Sequence[int]) -> list[int]:
    seen: dict[int, int] = {}
    rounds = []
    for owner in owners:
        rounds.append(seen.get(owner, 0))
        seen[owner] = rounds[-1] + 1
    return rounds


def _no_dependence(name: str, hint: str) -> ValueError:
    return ValueError(
        f"the detection scores do not depend on layer {name!r} (e.g. an RPN, box-regression "
        "or mask layer); choose a layer on the classification path" + (", " + hint if hint else "")
    )


def round_gradients(
    scores: torch.Tensor, tensors: Sequence[torch.Tensor]
) -> list[torch.Tensor | None]:
    """Per tensor, the gradient of each of the ``R`` scalars ``scores``: ``(R, *shape)``, or
    None for a tensor they do not reach. One vectorised backward; a loop where vmap cannot
    run (an op on the path with no batching rule)."""
    if len(scores) == 1:
        grads = torch.autograd.grad(scores[0], tensors, retain_graph=True, allow_unused=True)
        return [None if g is None else g[None] for g in grads]
    try:
        return list(
            torch.autograd.grad(
                scores,
                tensors,
                grad_outputs=torch.eye(len(scores), dtype=scores.dtype, device=scores.device),
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
        )
    except RuntimeError:  # no batching rule on the path: one backward per round
        parts = [round_gradients(score[None], tensors) for score in scores]
        return [
            None if parts[0][slot] is None else torch.cat([p[slot] for p in parts])
            for slot in range(len(tensors))
        ]


def own_gradients(
    targets: torch.Tensor | Sequence[torch.Tensor],
    owners: Sequence[int] | torch.Tensor,
    tensors: torch.Tensor | Sequence[torch.Tensor],
    name: str = "",
    *,
    hint: str = "",
    missing: str = "raise",
    groups: Sequence[int] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Each target's gradient at its own row of each tensor: ``(D, *tensor.shape[1:])``.

    Args:
        targets: ``D`` grad-connected scalars: a sequence (each group's backward then goes
            through its own targets' graphs only), or a ``(D,)`` tensor.
        owners: ``D`` row indices: target ``d`` depends on row ``owners[d]`` of every tensor
            only (its proposal row, or its image).
        tensors: one tensor (the result is one tensor) or several sharing their rows (the
            result is a list).
        name, hint: for the error when the targets do not reach a tensor.
        missing: ``"raise"`` a ValueError naming the layer, or ``"zero"`` (zero gradients).
        groups: ``D`` group ids (a one-stage detection's level): targets of different groups
            never share a backward. A batched backward runs every member through the union
            of the members' graphs, so a level's detections go back through that level's
            part of the head alone.
    """
    single = isinstance(tensors, torch.Tensor)
    tensors = [tensors] if single else list(tensors)
    # A sequence of scalars keeps each group's graph apart: a group's sum built from a stacked
    # tensor would send the backward through every target's graph (zeros for the others).
    scalars = None if isinstance(targets, torch.Tensor) else [t.reshape(()) for t in targets]
    flat = targets.reshape(-1) if scalars is None else None
    owners = [int(o) for o in owners]
    out = [t.new_zeros((len(owners), *t.shape[1:])) for t in tensors]
    if not owners:
        return out[0] if single else out
    labels = [0] * len(owners) if groups is None else [int(g) for g in groups]
    for group in sorted(set(labels)):
        members = [d for d, g in enumerate(labels) if g == group]
        if scalars is not None:
            picked = torch.stack([scalars[d] for d in members])
        else:
            picked = flat[torch.tensor(members, dtype=torch.long, device=flat.device)]
        _rounds_into(out, picked, owners, tensors, members, name, hint, missing)
    return out[0] if single else out


def _rounds_into(out, picked, owners, tensors, members, name, hint, missing) -> None:
    """:func:`own_gradients` for the targets ``members`` (their scalars ``picked``), written
    into ``out``."""
    device = tensors[0].device
    occurrence = _round_of([owners[d] for d in members])
    rounds_of = torch.tensor(occurrence, dtype=torch.long, device=device)
    rows_of = torch.tensor([owners[d] for d in members], dtype=torch.long, device=device)
    index = torch.tensor(members, dtype=torch.long, device=device)
    rounds = picked.new_zeros(max(occurrence) + 1).index_add(0, rounds_of.to(picked.device), picked)
    chunk = max(1, GRADIENT_BUDGET // max(1, sum(t.numel() for t in tensors)))
    for start in range(0, len(rounds), chunk):
        part = rounds[start : start + chunk]
        grads = round_gradients(part, tensors)
        these = torch.nonzero((rounds_of >= start) & (rounds_of < start + len(part))).flatten()
        for slot, grad in enumerate(grads):
            if grad is None:
                if missing == "raise":
                    raise _no_dependence(name, hint)
                continue
            out[slot][index[these]] = grad[rounds_of[these] - start, rows_of[these]].to(out[slot])


def level_gradients(
    targets: torch.Tensor | Sequence[torch.Tensor],
    levels: Sequence[int] | torch.Tensor,
    owners: Sequence[int] | torch.Tensor,
    calls: Sequence[torch.Tensor],
    *,
    name: str = "",
    hint: str = "",
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A one-stage head called once per level: target ``d`` at ``calls[levels[d]]``, row
    ``owners[d]`` (its image). Returns per detection ``(activations, gradients)``, each
    ``(C, h_l, w_l)``: one :func:`own_gradients` per level, so a backward goes through that
    level's part of the head only."""
    if isinstance(targets, torch.Tensor):
        targets = list(targets.reshape(-1).unbind())
    levels = [int(v) for v in levels]
    owners = [int(o) for o in owners]
    acts: list = [None] * len(levels)
    grads: list = [None] * len(levels)
    for level in sorted(set(levels)):
        idx = [d for d, v in enumerate(levels) if v == level]
        picked = [targets[d] for d in idx]
        level_grads = own_gradients(
            picked, [owners[d] for d in idx], calls[level], name=name, hint=hint
        )
        for j, d in enumerate(idx):
            acts[d] = calls[level][owners[d]]
            grads[d] = level_grads[j]
    return acts, grads
