"""Fewer backward rounds at the Detect head's input: detections whose windows are disjoint share
one backward.

A YOLO detection's class logit at cell ``(y, x)`` of its level is the class branch
(``Detect.cv3[level]``: stride-1 convolutions and pointwise layers) applied to the head's
input, so it reads only the ``(2r+1) x (2r+1)`` window of that input around ``(y, x)``, ``r``
the branch's receptive radius (``core.detect.receptive_radius``: the sum of its convolutions'
``dilation * (k - 1) / 2``; 2 for YOLOv8's and YOLO11's branches). Its gradient is zero outside the window. So the gradient of a
sum of logits whose windows do not overlap (in one image; different images are different rows)
is, inside each window, exactly that detection's own gradient: one backward per round of
pairwise-disjoint detections, then each gradient cut out by its window. The detections are
put into rounds greedily, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.detect.rows import round_gradients
from ..core.gradients import GRADIENT_BUDGET

__all__ = ["windowed_gradients"]


def _rounds(owners: Sequence[int], cells: Sequence[tuple[int, int]], radius: int) -> list[int]:
    placed: list[list[tuple[int, int, int]]] = []  # per round: (owner, y, x)
    rounds = []
    for owner, (y, x) in zip(owners, cells):
        for index, members in enumerate(placed):
            if all(
                o != owner or abs(y - my) > 2 * radius or abs(x - mx) > 2 * radius
                for o, my, mx in members
            ):
                members.append((owner, y, x))
                rounds.append(index)
                break
        else:
            placed.append([(owner, y, x)])
            rounds.append(len(placed) - 1)
    return rounds


def windowed_gradients(
    targets: Sequence[torch.Tensor],
    owners: Sequence[int],
    cells: Sequence[tuple[int, int]],
    activation: torch.Tensor,
    radius: int,
) -> torch.Tensor:
    """``(D, C, h, w)``: target ``d``'s gradient at row ``owners[d]`` of ``activation``
    (``(N, C, h, w)``), for targets reading only the window of ``radius`` around
    ``cells[d] = (y, x)`` (module docstring)."""
    rounds = _rounds(owners, cells, radius)
    count = max(rounds) + 1
    scores = torch.stack([t.reshape(()) for t in targets])
    summed = scores.new_zeros(count).index_add(
        0, torch.tensor(rounds, device=scores.device), scores
    )
    height, width = activation.shape[-2:]
    out = activation.new_zeros((len(targets), *activation.shape[1:]))
    chunk = max(1, GRADIENT_BUDGET // max(1, activation.numel()))
    for start in range(0, count, chunk):
        (grads,) = round_gradients(summed[start : start + chunk], [activation])
        if grads is None:
            raise ValueError("the detection scores do not depend on the Detect head's input")
        for d, (r, owner, (y, x)) in enumerate(zip(rounds, owners, cells)):
            if start <= r < start + chunk:
                y0, y1 = max(0, y - radius), min(height, y + radius + 1)
                x0, x1 = max(0, x - radius), min(width, x + radius + 1)
                out[d, :, y0:y1, x0:x1] = grads[r - start, owner, :, y0:y1, x0:x1]
    return out
