"""Parameter-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018).

A map that explains the model must change when the model's learned weights are destroyed.
Re-initialise the top ``L`` layers of a copy of the model (the last ``L`` modules holding
parameters, output side first, as in the paper's cascading randomisation), explain the same
images and classes with both, and compare the maps per image:

    rank_correlation_i = spearman(a_i, b_i)  (Pearson correlation of the pixels' ranks,
                                              ties given their average rank)
    drift_i            = 1 - pearson(a_i, b_i)  (``core.drift.map_drift``)

A method that passes has low rank correlation (near 0) and drift near 1 or above; a map
that stays the same (rank correlation near 1) shows the image, not what the model learned.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .core.drift import map_drift
from .core.layers import unwrap_model
from .core.targets import TargetSpec
from .engine import CAMEngine

__all__ = ["parameter_randomisation", "randomise_top_layers", "spearman"]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per map pair: ``(N, H, W)`` twice -> ``(N,)`` float32; ties
    take their average rank; NaN where either map is flat."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().double().flatten(1)
        ordered = flat.sort(dim=1).values
        below = torch.searchsorted(ordered, flat, right=False)
        upto = torch.searchsorted(ordered, flat, right=True)
        return (below + upto - 1).double() / 2  # average 0-based rank of the tie group

    ra, rb = ranks(a), ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    corr = (ra * rb).sum(1) / denominator
    return corr.masked_fill(denominator == 0, torch.nan).float()


def randomise_top_layers(model: nn.Module, top_layers: int = 1, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` whose last ``top_layers`` parameter-holding modules are
    re-initialised by their ``reset_parameters`` under a fixed seed, without drawing from
    the global RNG. ``model`` itself is not changed."""
    if isinstance(top_layers, bool) or not isinstance(top_layers, int) or top_layers < 1:
        raise ValueError(f"top_layers must be an integer >= 1, got {top_layers!r}")
    clone = copy.deepcopy(unwrap_model(model))
    holders = [m for m in clone.modules() if any(True for _ in m.parameters(recurse=False))]
    if len(holders) < top_layers:
        raise ValueError(f"the model has {len(holders)} layers with parameters, not {top_layers}")
    chosen = holders[-top_layers:]
    missing = [type(m).__name__ for m in chosen if not hasattr(m, "reset_parameters")]
    if missing:
        raise ValueError(f"cannot re-initialise {missing}: no reset_parameters() method")
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in chosen:
            module.reset_parameters()
    return clone


def parameter_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    layer: str | None = None,
    methods: str | Sequence[str] = ("gradcam", "gradcam++"),
    targets: TargetSpec = None,
    top_layers: int = 1,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{method: {"rank_correlation": (B,), "drift": (B,)}}`` between the maps of ``model``
    and of ``randomise_top_layers(model, top_layers, seed)``, for the classes the trained
    model explains (``targets`` as in ``CAMEngine.explain``)."""
    trained = CAMEngine(model, layer=layer, methods=methods)
    result = trained.explain(images, targets)
    same_classes = targets if callable(targets) else result.class_ids
    randomised = CAMEngine(
        randomise_top_layers(model, top_layers, seed), layer=result.layer, methods=methods
    )
    other = randomised.explain(images, same_classes)
    scores = {}
    for method in trained.methods:
        a, b = result.maps[method][:, 0], other.maps[method][:, 0]
        scores[method] = {"rank_correlation": spearman(a, b), "drift": map_drift(a, b)}
    return scores
