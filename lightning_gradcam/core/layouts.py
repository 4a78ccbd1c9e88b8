"""Turn a layer's output into a ``(B, C, h, w)`` feature map, or refuse.

Three layouts are told apart, plus a user's own ``reshape``:

- ``BCHW``: ``(B, C, h, w)``, convolutional networks;
- ``BHWC``: ``(B, h, w, C)``, channels-last stages (timm and torchvision Swin, detectron2 ViTDet);
- ``tokens``: ``(B, P + h*w, C)``, vision transformers; the ``P`` prefix tokens (class,
  distillation, register tokens) are left out and the rest read row-major as an ``h x w`` grid.

How a layout is known, in order: what the model says (timm's ``patch_embed.patch_size`` and
``num_prefix_tokens``; transformers' ``config.patch_size`` and the class / distillation /
register tokens of its ``embeddings``; torchvision's ``patch_size`` and ``class_token``), then
shapes: the axis equal to the layer's channel count (its ``out_channels``, ``out_features``,
``num_features``, ``normalized_shape``...), and a grid that a single stride maps the input size
onto. Where more than one reading fits, :func:`detect_layout` raises :class:`LayoutError`
naming the layer, the shape and how to pass ``reshape=``: a ``(B, h, w, C)`` read as
``(B, C, h, w)`` draws vertical stripes, which is worse than no picture.

Activations and gradients go through the same :meth:`Layout.to_bchw`, so every CAM method
works unchanged on the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .layers import layer_context

__all__ = [
    "Layout",
    "LayoutError",
    "Reshape",
    "check_reshape",
    "closest_aspect",
    "detect_layout",
    "layer_channels",
    "to_feature_maps",
    "token_grids",
    "user_layout",
]

#: A user's layout: activation (or gradient, same shape) -> ``(B, C, h, w)``.
Reshape = Callable[[torch.Tensor], torch.Tensor]

# More prefix tokens than this (class + distillation + registers) is not guessed from shapes.
_MAX_GUESSED_PREFIX = 8

_CHANNEL_ATTRIBUTES = ("out_channels", "out_features", "num_features", "num_channels")


class LayoutError(ValueError):
    """A layer output the engine cannot read as a feature map with certainty."""


@dataclass(frozen=True)
class Layout:
    """How one layer's output maps to ``(B, C, h, w)``.

    Attributes:
        kind: ``"BCHW"``, ``"BHWC"``, ``"tokens"`` or ``"reshape"`` (the user's callable).
        grid: ``(h, w)`` of the feature map (``None`` for ``"reshape"``).
        prefix: prefix tokens left out (``tokens`` only).
        source: what decided it, e.g. ``"shapes"``, ``"model: patch_size 16, 1 prefix token"``.
    """

    kind: str
    grid: tuple[int, int] | None = None
    prefix: int = 0
    source: str = "shapes"
    reshape: Reshape | None = None

    def to_bchw(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (activation or gradient, any leading batch size) as ``(N, C, h, w)``."""
        if self.kind == "BCHW":
            return tensor
        if self.kind == "BHWC":
            return tensor.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            h, w = self.grid
            spatial = tensor[:, self.prefix :]
            return spatial.reshape(tensor.shape[0], h, w, tensor.shape[-1]).permute(0, 3, 1, 2)
        out = self.reshape(tensor)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != tensor.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LayoutError(
                f"reshape= turned a {tuple(tensor.shape)} tensor into {got}; it must return "
                f"a (B, C, h, w) tensor with the same batch size ({tensor.shape[0]})"
            )
        return out

    def __str__(self) -> str:
        if self.kind == "reshape":
            return "reshape= (the user's callable)"
        h, w = self.grid
        if self.kind == "tokens":
            what = f"tokens (B, {self.prefix}+{h}x{w}, C), {self.prefix} prefix token(s) left out"
        else:
            what = {"BCHW": "(B, C, h, w)", "BHWC": "(B, h, w, C) channels-last"}[self.kind]
            what += f", {h}x{w}"
        return f"{what}; from {self.source}"


def user_layout(reshape: Reshape) -> Layout:
    """The layout of a ``reshape=`` callable."""
    return Layout("reshape", source="reshape=", reshape=reshape)


def check_reshape(reshape: object) -> Reshape | None:
    """Validate a ``reshape=`` argument (``None`` or a callable) before any work is done."""
    if reshape is not None and not callable(reshape):
        raise TypeError(
            f"reshape must be a callable mapping a layer's output to (B, C, h, w), or None, "
            f"got {type(reshape).__name__}"
        )
    return reshape


# ---------------------------------------------------------------------------- hints


def layer_channels(module: nn.Module, parent: nn.Module | None = None) -> int | None:
    """The channel count of a layer's output, as its own module says (``out_channels``,
    ``out_features``, ``num_features``, ``num_channels``, ``normalized_shape[-1]``), else as the
    last such submodule says, else (a parameter-free leaf such as a ReLU) its nearest earlier
    sibling in ``parent``. ``None`` when nothing says."""
    return _channels_and_axis(module, parent)[0]


def _own_channels(m: nn.Module) -> tuple[int | None, str | None]:
    """A module's channel count and the axis it puts them on in a 4-D tensor: ``"first"``
    for convolutions and batch/group/instance norms (and ``*2d`` layer norms), ``"last"``
    for linear layers and layer norms."""
    axis = "last" if isinstance(m, (nn.Linear, nn.LayerNorm)) else "first"
    if "2d" in type(m).__name__.lower():
        axis = "first"
    for attribute in _CHANNEL_ATTRIBUTES:
        value = getattr(m, attribute, None)
        if isinstance(value, int) and value > 0:
            return value, axis
    shape = getattr(m, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[-1], int):
        return int(shape[-1]), axis
    return None, None


def _channels_and_axis(
    module: nn.Module, parent: nn.Module | None = None
) -> tuple[int | None, str | None]:
    """:func:`layer_channels`, with the axis its source module uses; a permutation
    (a module named ``*Permute*``) after that source flips the axis (torchvision's
    ``CNBlock`` ends ``Linear, Permute``)."""
    flipped = False
    for m in reversed(list(module.modules())):
        if "permute" in type(m).__name__.lower():
            flipped = not flipped
        count, axis = _own_channels(m)
        if count is not None:
            if flipped:
                axis = {"first": "last", "last": "first"}[axis]
            return count, axis
    if parent is not None:
        siblings = list(parent.children())
        index = next((i for i, m in enumerate(siblings) if m is module), None)
        for m in reversed(siblings[:index] if index is not None else []):
            count, axis = _channels_and_axis(m)
            if count is not None:
                return count, axis
    return None, None


def size_pair(value: object) -> tuple[int, int] | None:
    """``(h, w)`` from a size a model's metadata gives (``16`` or ``(16, 16)``), else None."""
    if isinstance(value, int) and value > 0:
        return value, value
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
    ):
        return int(value[0]), int(value[1])
    return None


def _model_hints(owners: list[nn.Module]) -> tuple[tuple[int, int] | None, int | None, str]:
    """``(patch_size, prefix_tokens, what said so)`` from the nearest owner that says."""
    for m in owners:
        patch = prefix = None
        embed = getattr(m, "patch_embed", None)
        if embed is not None:  # timm
            patch = size_pair(getattr(embed, "patch_size", None))
            value = getattr(m, "num_prefix_tokens", None)
            prefix = int(value) if isinstance(value, int) else None
        config = getattr(m, "config", None)
        embeddings = next(  # ViTModel.embeddings, ViTForImageClassification.vit.embeddings
            (
                e
                for e in (getattr(i, "embeddings", None) for i in (m, *m.children()))
                if e is not None
            ),
            None,
        )
        if patch is None and isinstance(embeddings, nn.Module) and config is not None:
            patch = size_pair(getattr(config, "patch_size", None))  # transformers
            if patch is not None:
                prefix = 0
                for name in ("cls_token", "distillation_token"):
                    if isinstance(getattr(embeddings, name, None), torch.Tensor):
                        prefix += 1
                registers = getattr(embeddings, "register_tokens", None)
                if isinstance(registers, torch.Tensor):
                    prefix += int(registers.shape[1])
        if patch is None and size_pair(getattr(m, "patch_size", None)) is not None:  # torchvision
            patch = size_pair(m.patch_size)
            token = getattr(m, "class_token", None)
            prefix = 1 if isinstance(token, torch.Tensor) else None
        if patch is not None or prefix is not None:
            return patch, prefix, type(m).__name__
    return None, None, ""


# ---------------------------------------------------------------------------- shapes


def _grid_fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether one stride ``s`` maps the input ``(H, W)`` to ``(h, w)``, up to rounding:
    ``|h - H/s| < 1`` and ``|w - W/s| < 1`` for a common real ``s >= 1/2``."""
    if h < 1 or w < 1:
        return False

    def interval(n: int, full: int) -> tuple[float, float]:
        return full / (n + 1), (full / (n - 1) if n > 1 else math.inf)

    (lo_h, hi_h), (lo_w, hi_w) = interval(h, size[0]), interval(w, size[1])
    return max(lo_h, lo_w, 0.5) < min(hi_h, hi_w)


def token_grids(
    tokens: int, size: tuple[int, int], prefixes: list[int]
) -> set[tuple[int, int, int]]:
    """Every ``(h, w, P)`` with ``P + h*w == tokens`` and ``(h, w)`` the input at one
    integer stride (rounded down or up alike on both sides)."""
    found = set()
    for stride in range(1, max(size) + 1):
        for rounding in (math.floor, math.ceil):
            h, w = rounding(size[0] / stride), rounding(size[1] / stride)
            for p in prefixes:
                if h >= 1 and w >= 1 and p + h * w == tokens:
                    found.add((h, w, p))
    return found


# How much closer (in |log| of the h/w ratio against H/W) the best grid must be than the
# next one for the aspect ratio to decide: 6x10 against 6x9 at 96x160 differ by 0.105.
_ASPECT_MARGIN = 0.05


def closest_aspect(
    grids: set[tuple[int, int, int]], size: tuple[int, int]
) -> tuple[int, int, int] | None:
    """Of several ``(h, w, P)`` readings of one token count, the one whose ``h / w`` matches
    the input's ``H / W`` clearly best (by at least ``_ASPECT_MARGIN`` in ``|log|`` of the
    ratio): ``1 + 6x10`` rather than ``7 + 6x9`` for 61 tokens at 96x160. ``None`` when two
    readings match about as well (a square input, ``0 + 4x4`` against ``7 + 3x3``)."""
    if len(grids) < 2:
        return None
    target = math.log(size[0] / size[1])
    ranked = sorted(grids, key=lambda g: abs(math.log(g[0] / g[1]) - target))
    errors = [abs(math.log(g[0] / g[1]) - target) for g in ranked[:2]]
    return ranked[0] if errors[1] - errors[0] >= _ASPECT_MARGIN else None


def _hint(shape: tuple[int, ...], name: str, size: tuple[int, int]) -> str:
    example = {
        3: "reshape=lambda a: a[:, 1:].reshape(a.shape[0], h, w, a.shape[-1]).permute(0, 3, 1, 2)"
        " (1 class token, an h x w grid)",
        4: "reshape=lambda a: a.permute(0, 3, 1, 2) (for a (B, h, w, C) output), or "
        "reshape=lambda a: a (for (B, C, h, w))",
    }.get(len(shape), "reshape=lambda a: ... returning (B, C, h, w)")
    return (
        f"layer {name!r} outputs shape {shape} for a {size[0]}x{size[1]} input; pass a callable "
        f"that returns (B, C, h, w), e.g. {example}, or choose another layer"
    )


def detect_layout(
    activation: torch.Tensor,
    name: str,
    input_size: tuple[int, int],
    module: nn.Module | None = None,
    owners: list[nn.Module] = (),
    parent: nn.Module | None = None,
) -> Layout:
    """The layout of ``activation``, the output of layer ``name`` for an input of
    ``input_size = (H, W)``.

    Args:
        module: the layer itself (its channel count, see :func:`layer_channels`).
        owners: the layer's ancestors, nearest first (where the model says its patch size
            and prefix tokens).
        parent: the layer's parent (a parameter-free layer takes its sibling's channels).

    Raises:
        LayoutError: no layout, or more than one, fits; the message says how to pass
            ``reshape=``.
    """
    shape = tuple(activation.shape)
    size = (int(input_size[0]), int(input_size[1]))
    channels, axis = _channels_and_axis(module, parent) if module is not None else (None, None)
    if activation.dim() == 4:
        return _detect_4d(shape, name, size, channels, axis)
    if activation.dim() == 3:
        return _detect_tokens(shape, name, size, channels, list(owners))
    raise LayoutError(
        f"layer {name!r} outputs shape {shape}; CAM needs a (B, C, h, w) feature map, "
        f"a (B, h, w, C) one or tokens (B, P + h*w, C): choose another layer, or pass "
        f"reshape= (a callable returning (B, C, h, w))"
    )


def _detect_4d(
    shape: tuple[int, ...],
    name: str,
    size: tuple[int, int],
    channels: int | None,
    axis: str | None,
) -> Layout:
    _, a, b, c = shape
    readings = {"BCHW": (b, c), "BHWC": (a, b)}
    by_channels = [k for k, axis in (("BCHW", a), ("BHWC", c)) if axis == channels]
    if len(by_channels) == 1:
        kind = by_channels[0]
        return Layout(kind, readings[kind], source=f"shapes: {channels} channels")
    candidates = by_channels or list(readings)
    fitting = [k for k in candidates if _grid_fits(*readings[k], size)]
    if len(fitting) == 1:
        kind = fitting[0]
        return Layout(kind, readings[kind], source="shapes: the grid that fits the input size")
    if len(fitting) == 2 and len(by_channels) == 2 and axis is not None:
        # As many channels as rows and columns (16 channels on a 16x16 grid): the module
        # that made the channels says on which axis it puts them.
        kind = "BCHW" if axis == "first" else "BHWC"
        return Layout(kind, readings[kind], source=f"the layer's modules: channels {axis}")
    said = f"its channel count {channels} " if channels else "its channel count (unknown) "
    raise LayoutError(
        f"cannot tell whether the channels are the second or the last axis: {said}and the "
        f"input size fit {'both' if fitting else 'neither'}. " + _hint(shape, name, size)
    )


def _detect_tokens(
    shape: tuple[int, ...],
    name: str,
    size: tuple[int, int],
    channels: int | None,
    owners: list[nn.Module],
) -> Layout:
    _, tokens, dim = shape
    if channels is not None and dim != channels and tokens == channels:
        raise LayoutError(
            f"layer {name!r} outputs a (B, C, L) sequence {shape} (its {channels} channels come "
            f"second), not tokens (B, N, C). " + _hint(shape, name, size)
        )
    patch, prefix, owner = _model_hints(owners)
    if patch is not None:
        h, w = size[0] // patch[0], size[1] // patch[1]
        spare = tokens - h * w
        if (prefix is not None and spare == prefix) or (
            prefix is None and 0 <= spare <= _MAX_GUESSED_PREFIX
        ):
            said = f"{owner}: patch size {patch[0]}x{patch[1]}, {spare} prefix token(s)"
            return Layout("tokens", (h, w), spare, source=f"model ({said})")
    prefixes = [prefix] if prefix is not None else list(range(_MAX_GUESSED_PREFIX + 1))
    grids = token_grids(tokens, size, prefixes)
    if len(grids) == 1:
        h, w, p = grids.pop()
        how = f"{owner} says {p} prefix token(s)" if prefix is not None else "guessed prefix"
        return Layout("tokens", (h, w), p, source=f"shapes: {tokens} tokens, {how}")
    best = closest_aspect(grids, size)
    if best is not None:
        h, w, p = best
        how = "the input's aspect ratio decides among " + ", ".join(
            f"{q}+{a}x{b}" for a, b, q in sorted(grids)
        )
        return Layout("tokens", (h, w), p, source=f"shapes: {tokens} tokens, {how}")
    found = ", ".join(f"{p}+{h}x{w}" for h, w, p in sorted(grids)) or "none"
    raise LayoutError(
        f"cannot tell how the {tokens} tokens form a grid (prefix + h x w that fit: {found}). "
        + _hint(shape, name, size)
    )


def to_feature_maps(
    model: nn.Module,
    name: str,
    activations: torch.Tensor | list[torch.Tensor],
    gradients: torch.Tensor,
    input_size: tuple[int, int],
    reshape: Reshape | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations and gradients of layer ``name`` of ``model`` (``(D, ...)`` each, or a
    list of ``D`` activations) as ``(D, C, h, w)`` each, through one layout: the user's
    ``reshape`` or :func:`detect_layout`'s. For callers that hold per-detection rows
    (detectron2's image-level layers)."""
    acts = torch.stack(list(activations)) if isinstance(activations, list) else activations
    if reshape is not None:
        layout = user_layout(reshape)
    else:
        module, owners, parent = layer_context(model, name)
        layout = detect_layout(acts, name, input_size, module, owners, parent)
    return layout.to_bchw(acts), layout.to_bchw(gradients)
