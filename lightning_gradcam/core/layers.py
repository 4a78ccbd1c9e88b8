"""Find the layer to explain: by dotted name, through wrappers, or automatically."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .capture import watch_outputs

__all__ = [
    "LayerNotFoundError",
    "unwrap_model",
    "named_layers",
    "resolve_layer",
    "full_layer_name",
    "DEFAULT_LAYER_HINT",
    "is_layer_pattern",
    "expand_layer_names",
    "find_last_4d_layer",
    "layer_context",
    "PASS_THROUGH",
]


class LayerNotFoundError(ValueError):
    """A layer name that does not exist in the model; the message lists the closest names."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel``/``DataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, however nested, so names match the user's own module tree."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


_WRAPPER_SEGMENTS = ("_orig_mod", "module")


def _plain_name(name: str) -> str:
    """``module.backbone._orig_mod.layer4`` -> ``backbone.layer4``: wrapper segments dropped,
    so a name works whether or not the model (or a submodule) is wrapped or compiled."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule by its plain dotted name (wrapper segments removed)."""
    layers: dict[str, nn.Module] = {}
    for name, module in unwrap_model(model).named_modules():
        plain = _plain_name(name)
        if plain:
            layers.setdefault(plain, module)
    return layers


# What the classification engine and callback add to a "no such layer" message; detector
# entry points pass their own hint (there the last 4-D layer is not a sensible default).
DEFAULT_LAYER_HINT = "or layer=None for the model's default (its last block or stage)"

# How many candidates an "ambiguous suffix" message lists before "and N more".
_MAX_LISTED = 10


def _by_path_length(names: list[str]) -> list[str]:
    """Shortest path first (fewest dots, then fewest characters); ties keep module order."""
    return sorted(names, key=lambda n: (n.count("."), len(n)))


def _lookup(model: nn.Module, name: str, hint: str | None) -> tuple[str, nn.Module]:
    if not isinstance(name, str) or not name:
        raise LayerNotFoundError(f"layer must be a non-empty dotted module name, got {name!r}")
    modules = named_layers(model)
    clean = _plain_name(name)
    if clean in modules:
        return clean, modules[clean]
    names = list(modules)
    nested = [n for n in names if n.endswith("." + clean)]
    if len(nested) == 1:
        return nested[0], modules[nested[0]]
    if nested:
        ordered = _by_path_length(nested)
        listed = ", ".join(map(repr, ordered[:_MAX_LISTED]))
        more = len(ordered) - _MAX_LISTED
        if more > 0:
            listed += f" and {more} more"
        raise LayerNotFoundError(
            f"layer name {name!r} is ambiguous in {type(unwrap_model(model)).__name__}: "
            f"{len(ordered)} layers end with it: {listed}; pass the full dotted name"
        )
    close = difflib.get_close_matches(clean, names, n=5, cutoff=0.5)
    if not close:  # fall back to names sharing the last component, then the top-level ones
        tail = clean.rsplit(".", 1)[-1]
        close = [n for n in names if n.rsplit(".", 1)[-1] == tail][:5] or [
            n for n in names if "." not in n
        ][:8]
    names_hint = ", ".join(repr(n) for n in close)
    how = "Pass a dotted name from model.named_modules()" + (f", {hint}" if hint else "") + "."
    raise LayerNotFoundError(
        f"{type(unwrap_model(model)).__name__} has no layer named {name!r}. "
        f"Closest names: {names_hint}. {how}"
    )


def resolve_layer(model: nn.Module, name: str, hint: str | None = DEFAULT_LAYER_HINT) -> nn.Module:
    """Return the submodule at dotted ``name`` (``"layer4"``, ``"layer4.2"``, ``"features.29"``).

    A name that is not a full path but ends exactly one (``"layer4"`` for a LightningModule
    holding ``self.net = resnet50()``, i.e. ``"net.layer4"``) resolves to it.

    Args:
        hint: the end of the "no such layer" message after "Pass a dotted name from
            model.named_modules()": how else the caller's user can choose a layer
            (``None``: nothing more). The default suits classification models.

    Raises:
        LayerNotFoundError: no such submodule, or a suffix shared by several; the message
            names the closest matches (for a suffix: every candidate, shortest path first,
            or the first ones and how many more).
    """
    return _lookup(model, name, hint)[1]


def full_layer_name(model: nn.Module, name: str, hint: str | None = DEFAULT_LAYER_HINT) -> str:
    """The full plain dotted name of the layer ``name`` designates, however it was given
    (``"layer4"`` -> ``"net.layer4"``; wrapper segments dropped), so that tags do not
    depend on how the user spelled the layer. Raises as ``resolve_layer`` does."""
    return _lookup(model, name, hint)[0]


def is_layer_pattern(name: str) -> bool:
    """Whether ``name`` is a glob over layer names (holds ``*`` or ``?``)."""
    return "*" in name or "?" in name


def _pattern_regex(pattern: str) -> re.Pattern:
    # One glob character never crosses a dot: `head.cls_subnet.*` = the direct children.
    parts = ("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts))


def expand_layer_names(
    model: nn.Module, names: Sequence[str], hint: str | None = DEFAULT_LAYER_HINT
) -> tuple[str, ...]:
    """Layer names with globs expanded, in module order: ``*`` matches any part of one
    dotted component, ``?`` one character (``"head.cls_subnet.*"``: every direct child of
    RetinaNet's classification subnet, ``head.cls_subnet.0`` ... ``.7``). Plain names are
    checked with :func:`resolve_layer` and kept as given; duplicates are dropped. ``hint``:
    as for :func:`resolve_layer`.

    Raises:
        LayerNotFoundError: a plain name or the fixed part of a pattern that names no layer
            (closest names in the message), or a pattern that matches nothing.
    """
    layers = named_layers(model)
    out: list[str] = []
    for name in names:
        if not is_layer_pattern(name):
            resolve_layer(model, name, hint)
            out.append(name)
            continue
        regex = _pattern_regex(_plain_name(name))
        matched = [layer for layer in layers if regex.fullmatch(layer)]
        if not matched:
            fixed = name.split("*")[0].split("?")[0].rsplit(".", 1)[0]
            if fixed and fixed != name:
                resolve_layer(model, fixed, hint)  # a wrong parent: report it with close matches
            raise LayerNotFoundError(
                f"no layer of {type(unwrap_model(model)).__name__} matches {name!r}"
                + (f" (the children of {fixed!r} are not named so)" if fixed else "")
            )
        out.extend(matched)
    return tuple(dict.fromkeys(out))


# Layers that only pool, drop or pass features on: explaining them adds nothing over the
# feature map before them (and a global pool's 1x1 output has no spatial extent at all).
PASS_THROUGH = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.Flatten,
)


def find_last_4d_layer(model: nn.Module, run_forward: Callable[[], object]) -> str:
    """Name of the last submodule with a spatial 4-D output during ``run_forward()``.

    "Last" is the last to *finish* its forward, so for a ``Sequential`` stage whose final
    block has a 4-D output the stage itself wins (e.g. ``layer4`` rather than
    ``layer4.2.relu``), which is the conventional Grad-CAM layer. Pooling, dropout and
    identity layers and ``1x1`` outputs are skipped (resnet's ``avgpool`` is 4-D but has no
    spatial extent). Runs under ``no_grad``.
    """
    order: list[str] = []

    def record(name: str, module: nn.Module, output: object) -> None:
        if (
            isinstance(output, torch.Tensor)
            and output.dim() == 4
            and output.shape[-1] * output.shape[-2] > 1
            and not isinstance(module, PASS_THROUGH)
        ):
            order.append(name)

    watch_outputs(named_layers(model), run_forward, record)
    if not order:
        raise LayerNotFoundError(
            f"{type(unwrap_model(model)).__name__} has no submodule with a 4-D (B,C,H,W) output; "
            "name the layer to explain explicitly with layer=..."
        )
    return order[-1]


def layer_context(
    model: nn.Module, name: str, layers: dict[str, nn.Module] | None = None
) -> tuple[nn.Module, list[nn.Module], nn.Module]:
    """``(layer, ancestors nearest first, parent)`` for the layer at plain dotted ``name``
    (``layers``: ``named_layers(model)``, if already at hand)."""
    layers = named_layers(model) if layers is None else layers
    if name not in layers:  # a suffix such as "layer4" for "net.layer4"
        module = resolve_layer(model, name)
        name = next(n for n, m in layers.items() if m is module)
    parts = name.split(".")
    ancestors = [layers[".".join(parts[:i])] for i in range(len(parts) - 1, 0, -1)]
    ancestors.append(unwrap_model(model))
    return layers[name], ancestors, ancestors[0]
