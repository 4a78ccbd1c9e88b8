"""What Hugging Face transformers says about its vision models' last feature map.

A transformers image model returns, with ``output_hidden_states=True``, the output of every
stage (``hidden_states``; channels-first ``reshaped_hidden_states`` as well for Swin-like
models). The last of them is the library's own last feature map; its grid is the model's
(``config.patch_size`` for token models, the prefix tokens being the rest of the sequence).
:mod:`lightning_gradcam.models.defaults` matches that tensor against the modules' outputs.

Duck-typed: nothing here imports transformers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.layouts import size_pair, token_grids

__all__ = ["is_transformers_model", "hf_references"]

# More prefix tokens than this (class, distillation, registers) is not a prefix.
_MAX_PREFIX = 8


def is_transformers_model(model: nn.Module) -> bool:
    """A transformers model (its class comes from ``transformers`` and it has a config)."""
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def _tokens_to_map(
    tokens: torch.Tensor, config: object, size: tuple[int, int]
) -> torch.Tensor | None:
    """``(B, P + h*w, C)`` hidden states as ``(B, C, h, w)``, the grid from the patch size."""
    n = tokens.shape[1]
    patch = size_pair(getattr(config, "patch_size", None))
    grids = []
    if patch is not None:
        for rounding in (lambda a, b: a // b, lambda a, b: -(-a // b)):
            h, w = rounding(size[0], patch[0]), rounding(size[1], patch[1])
            if 0 <= n - h * w <= _MAX_PREFIX:
                grids.append((h, w, n - h * w))
    if not grids:  # a later stage (LeViT, PVT): the grid one stride maps the input onto
        found = token_grids(n, size, list(range(_MAX_PREFIX + 1)))
        fewest = min((p for _, _, p in found), default=None)
        grids = [g for g in found if g[2] == fewest]
        if len(grids) != 1:
            return None
    h, w, prefix = grids[0]
    spatial = tokens[:, prefix:]
    return spatial.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def hf_references(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The last two hidden states transformers gives for ``images``, last first, as
    ``(B, C, h, w)`` (``reshaped_hidden_states`` where the model has them); ``[]`` where the
    model takes no ``output_hidden_states`` or says nothing spatial. Runs under
    ``no_grad``; the caller hooks the modules meanwhile."""
    try:
        with torch.no_grad():
            out = model(pixel_values=images, output_hidden_states=True)
    except (TypeError, ValueError, RuntimeError):
        return []
    tokens = getattr(out, "hidden_states", None)
    states = getattr(out, "reshaped_hidden_states", None) or tokens
    if not states:
        return []
    last = tokens[-1] if tokens else None
    channels = int(last.shape[-1]) if isinstance(last, torch.Tensor) and last.dim() == 3 else None
    size = (int(images.shape[-2]), int(images.shape[-1]))
    config = getattr(model, "config", None)
    maps = []
    for state in list(states)[::-1][:2]:  # never further back than the library's last two
        grid = None
        if isinstance(state, torch.Tensor) and state.dim() == 4:
            # Some reshaped states are channels-last (Hiera): the token width says which.
            last_axis = channels is not None and state.shape[-1] == channels != state.shape[1]
            grid = state.permute(0, 3, 1, 2) if last_axis else state
        elif isinstance(state, torch.Tensor) and state.dim() == 3:
            grid = _tokens_to_map(state, config, size)
        if grid is None:
            break
        maps.append(grid)
    return maps
