"""Which scalar to explain: turn a model output and a target spec into scores ``(B, K)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["TopK", "TargetSpec", "logits_of", "select_scores"]


@dataclass(frozen=True)
class TopK:
    """Explain the ``k`` highest-scoring classes of each image (K = k maps per image)."""

    k: int

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"TopK needs a positive integer k, got {self.k!r}")


#: ``None`` (predicted class), an int, a sequence of B ints, a tensor ``(B,)`` or ``(B, K)``,
#: ``TopK(k)``, or a callable mapping the model output to scores ``(B, K)``.
TargetSpec = None | int | Sequence[int] | torch.Tensor | TopK | Callable[[object], torch.Tensor]


def logits_of(output: object) -> torch.Tensor:
    """The ``(B, num_classes)`` logits in a model output.

    Accepts a tensor, a tuple/namedtuple (first element: torchvision's ``InceptionOutputs``,
    ``GoogLeNetOutputs``), or a mapping with ``"logits"`` or ``"out"``.
    """
    if isinstance(output, torch.Tensor):
        logits = output
    elif isinstance(output, Mapping):
        key = next((k for k in ("logits", "out") if k in output), None)
        if key is None:
            raise TypeError(
                f"model returned a mapping with keys {sorted(output)}; expected 'logits' or "
                "'out', or pass targets as a callable mapping the output to scores (B, K)"
            )
        logits = output[key]
    elif isinstance(output, Sequence) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    else:
        raise TypeError(
            f"cannot find class scores in a model output of type {type(output).__name__}; "
            "pass targets as a callable mapping the output to scores (B, K)"
        )
    if logits.dim() != 2:
        raise ValueError(
            f"expected class scores of shape (B, num_classes), got {tuple(logits.shape)}; "
            "pass targets as a callable mapping the output to scores (B, K)"
        )
    return logits


def _class_ids(spec: TargetSpec, logits: torch.Tensor) -> torch.Tensor:
    batch, num_classes = logits.shape
    if spec is None:
        ids = logits.argmax(dim=1, keepdim=True)
    elif isinstance(spec, TopK):
        if spec.k > num_classes:
            raise ValueError(f"TopK({spec.k}) asks for more classes than the {num_classes} outputs")
        ids = logits.topk(spec.k, dim=1).indices
    elif isinstance(spec, bool):
        raise TypeError("targets must be a class id, not a bool")
    elif isinstance(spec, int):
        ids = torch.full((batch, 1), spec, dtype=torch.long, device=logits.device)
    else:
        ids = torch.as_tensor(spec, device=logits.device)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"targets must hold integer class ids, got dtype {ids.dtype}")
        if ids.dim() == 0:
            ids = ids.expand(batch)
        if ids.dim() not in (1, 2) or ids.shape[0] != batch:
            raise ValueError(
                f"targets give {ids.shape[0] if ids.dim() else 1} entries for a batch of "
                f"{batch} images (shape {tuple(ids.shape)}); pass one class id per image "
                "(B,), K ids per image (B, K), a single int for all, or None for the prediction"
            )
        ids = ids.long().reshape(batch, -1)
    bad = (ids < 0) | (ids >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"class id {int(ids[bad][0])} is outside the model's {num_classes} classes "
            f"(valid ids: 0..{num_classes - 1})"
        )
    return ids


def select_scores(output: object, spec: TargetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(scores, class_ids)``, both ``(B, K)``: the exact scalars to differentiate
    (pre-softmax logits, as in the Grad-CAM paper) and the classes they belong to.

    For a callable spec the callable's ``(B, K)`` output is the scores and ``class_ids`` is
    all ``-1`` (the classes are the callable's business).
    """
    if callable(spec) and not isinstance(spec, (torch.Tensor, TopK)):
        scores = spec(output)
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"a targets callable must return a tensor, got {type(scores).__name__}")
        if scores.dim() == 1:
            scores = scores[:, None]
        if scores.dim() != 2:
            raise ValueError(
                f"a targets callable must return scores of shape (B,) or (B, K), got "
                f"{tuple(scores.shape)}"
            )
        ids = torch.full(scores.shape, -1, dtype=torch.long, device=scores.device)
        return scores, ids
    logits = logits_of(output)
    ids = _class_ids(spec, logits)
    return logits.gather(1, ids), ids
