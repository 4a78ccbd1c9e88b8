"""The layer ``layer=None`` explains, and its layout: from the model library first.

One answer for the engine, the Lightning callback and the command line:

1. Find the model library's network inside the model (the model itself, or the timm /
   transformers / torchvision network a LightningModule or wrapper holds).
2. Ask the library where its last feature map is: timm's ``forward_intermediates`` (and
   ``feature_info``), transformers' ``hidden_states`` / ``reshaped_hidden_states``,
   torchvision's families (:mod:`.torchvision_meta`). The library's tensors are matched, by
   value, against every module's output during the same forward, so the answer is the
   outermost module that produces the library's own feature map, read the way the library
   reads it (channels-first, channels-last, or tokens with their prefix): a whole block or
   stage, never an embedding, a stem or a projection inside a block.
   Where the library's blocks return tuples, no module returns its feature map: then the
   last norm or block with the same grid whose change, when one corner of the image is
   brightened, follows the library's feature map (so a different token order is caught).
3. Otherwise, the shape heuristics of :mod:`lightning_gradcam.core.heuristics`.

Every candidate is then tried in one forward and backward: it must run once, keep the
batch axis first, read as an ``h x w`` grid (``h*w > 1``), and the explained score must
reach its spatial positions. The last condition moves a class-token ViT from its last block
(whose patch tokens the head never reads) to the block before, the input of the last
attention.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.capture import ActivationCapture
from ..core.heuristics import default_layer_candidates
from ..core.layers import (
    LayerNotFoundError,
    full_layer_name,
    layer_context,
    named_layers,
    unwrap_model,
)
from ..core.layouts import Layout, LayoutError, detect_layout
from ..core.state import cam_mode, preserve_model_state
from ..core.targets import select_scores
from .hf_meta import hf_references, is_transformers_model
from .timm_meta import feature_modules, is_timm_model, timm_references
from .torchvision_meta import family_layers, is_torchvision_classifier

__all__ = [
    "DefaultLayer",
    "choose_default_layer",
    "layout_fits",
    "library_layout",
    "library_network",
]

log = logging.getLogger(__name__)

# More prefix tokens than this is not read as class / distillation / register tokens.
_MAX_PREFIX = 8


@dataclass(frozen=True)
class DefaultLayer:
    """The default layer of a model: its full dotted name, its layout, and who said so."""

    name: str
    layout: Layout
    source: str


@dataclass(frozen=True)
class _Candidate:
    name: str
    layout: Layout | None
    source: str


def _library(module: nn.Module) -> str | None:
    if is_timm_model(module):
        return "timm"
    if is_transformers_model(module):
        return "transformers"
    if is_torchvision_classifier(module):
        return "torchvision"
    return None


def library_network(model: nn.Module) -> tuple[str, nn.Module, str] | None:
    """``(dotted name, module, library)`` of the outermost timm / transformers /
    torchvision network in ``model`` (``""`` for the model itself); the one with the most
    parameters where a model holds several; ``None`` for none."""
    model = unwrap_model(model)
    library = _library(model)
    if library is not None:
        return "", model, library
    found: list[tuple[str, nn.Module, str]] = []
    for name, module in named_layers(model).items():
        if any(name.startswith(outer + ".") for outer, _, _ in found):
            continue  # inside a library network already found
        library = _library(module)
        if library is not None:
            found.append((name, module, library))
    if not found:
        return None
    return max(found, key=lambda f: sum(p.numel() for p in f[1].parameters()))


def _input_of(module: nn.Module, run_forward: Callable[[], object]) -> torch.Tensor | None:
    """The image tensor ``module`` receives when ``run_forward()`` runs the model."""
    seen: list[torch.Tensor] = []

    def grab(_module, args, kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        tensors += [v for k, v in kwargs.items() if k == "pixel_values"]
        if tensors and not seen:
            seen.append(tensors[0])

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            run_forward()
    finally:
        handle.remove()
    return seen[0] if seen and seen[0].dim() == 4 else None


def _returns_its_input(module: nn.Module) -> bool:
    """Identity, dropout, flatten, an empty ``Sequential``: a module whose output is its
    input (a copy of a feature map, never the module that made it). Pools are kept: timm's
    VGG ends its features with a max-pool."""
    if isinstance(module, nn.Sequential) and len(module) == 0:
        return True
    return isinstance(module, (nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten))


def _record_outputs(
    root: nn.Module, run: Callable[[], object]
) -> tuple[object, dict[str, torch.Tensor]]:
    """``run()``'s result and the tensor output of every submodule of ``root``, in the
    order their forwards finish (a later call replaces an earlier one)."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            outputs.pop(name, None)
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                outputs[name] = output.detach().clone()  # in-place ops later must not change it

        return hook

    layers = named_layers(root)
    try:
        for name, module in layers.items():
            if not _returns_its_input(module):
                handles.append(module.register_forward_hook(make_hook(name)))
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    return result, outputs


def _readings(output: torch.Tensor, reference: torch.Tensor) -> list[tuple[Layout, torch.Tensor]]:
    """The ways ``output`` can be read as the ``(B, C, h, w)`` ``reference``."""
    batch, channels, h, w = reference.shape
    found = []
    if output.shape[0] != batch:
        return found
    if output.dim() == 4:
        if tuple(output.shape) == tuple(reference.shape):
            found.append((Layout("BCHW", (h, w)), output))
        if tuple(output.shape) == (batch, h, w, channels):
            found.append((Layout("BHWC", (h, w)), output.permute(0, 3, 1, 2)))
    elif output.dim() == 3 and output.shape[2] == channels:
        prefix = output.shape[1] - h * w
        if 0 <= prefix <= _MAX_PREFIX:
            spatial = output[:, prefix:].reshape(batch, h, w, channels).permute(0, 3, 1, 2)
            found.append((Layout("tokens", (h, w), prefix), spatial))
    return found


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * max(scale, 1e-12)))


def _matches(
    outputs: dict[str, torch.Tensor], reference: torch.Tensor, layers: dict[str, nn.Module]
) -> list[tuple[str, Layout, bool]]:
    """Modules whose output reads as ``reference``'s grid and channels, outermost (last to
    finish) first: ``(name, layout, same values)``, those with the very same values first.
    Of the others (where blocks return tuples, no module returns the feature map itself),
    norms come first (a norm is what feeds a block's attention or MLP) and projections
    (linear, convolution) are left out.
    A module that only the library's own method runs (timm's ``reroll``) is dropped later,
    when it does not run in the model's forward."""
    same, norms, shaped = [], [], []
    for name in reversed(list(outputs)):
        for layout, reading in _readings(outputs[name], reference):
            if _same(reading, reference):
                same.append((name, layout))
            elif "norm" in type(layers[name]).__name__.lower():
                norms.append((name, layout))
            elif not isinstance(layers[name], (nn.Linear, nn.modules.conv._ConvNd)):
                shaped.append((name, layout))
    return [(n, lay, True) for n, lay in same] + [(n, lay, False) for n, lay in norms + shaped]


# Candidates taken from one library feature map: enough to walk back from a class-token
# head's last norm to the first layer whose grid the head reads, few enough to stay fast.
_PER_REFERENCE = 6


def _library_candidates(
    root: nn.Module, library: str, images: torch.Tensor | None
) -> list[_Candidate]:
    if library == "torchvision":
        return [
            _Candidate(n, None, "torchvision: the family's last stage") for n in family_layers(root)
        ]
    if images is None:
        return []
    references_of = timm_references if library == "timm" else hf_references
    what = "forward_intermediates" if library == "timm" else "hidden_states"
    with torch.no_grad():
        references, outputs = _record_outputs(root, lambda: references_of(root, images))
    layers = named_layers(root)
    moved = None  # the same pass on an image changed in one corner, made only when needed
    found: list[_Candidate] = []
    for index, reference in enumerate(references):
        same: list[_Candidate] = []
        shaped: list[_Candidate] = []
        which = "last" if index == 0 else "next to last"
        for name, layout, exact in _matches(outputs, reference, layers)[:_PER_REFERENCE]:
            how = "" if exact else " (its grid; no module returns that tensor itself)"
            source = f"{library} {what}: the {which} feature map{how}"
            read = Layout(layout.kind, layout.grid, layout.prefix, source)
            if not exact:
                if moved is None:
                    with torch.no_grad():
                        moved = _record_outputs(root, lambda: references_of(root, _corner(images)))
                if _same_corner(
                    outputs[name], moved[1].get(name), read, reference, moved[0], index
                ):
                    shaped.append(_Candidate(name, read, source))
                continue
            same.append(_Candidate(name, read, source))
            before = _previous_sibling(name, layers)
            if before is not None:  # same grid, and it feeds the last block's attention
                source = f"{library} {what}: the block before the {which} feature map"
                layout_before = Layout(layout.kind, layout.grid, layout.prefix, source)
                same.append(_Candidate(before, layout_before, source))
        # The library's own tensor first, the block before it next (for a class-token head),
        # then layers that merely share its grid; then the same for the stage before.
        found += same + shaped
    if not found and library == "timm":
        found = [_Candidate(n, None, "timm feature_info") for n in feature_modules(root)[:2]]
    return found


# How well the change maps must agree (Pearson) for a layer to count as the same grid.
_AGREEMENT = 0.5


def _corner(images: torch.Tensor) -> torch.Tensor:
    """``images`` with their top-right quarter-by-quarter corner brightened."""
    out = images.clone()
    h, w = images.shape[-2:]
    out[..., : max(1, h // 4), w - max(1, w // 4) :] += 3.0
    return out


def _same_corner(
    output: torch.Tensor,
    moved_output: torch.Tensor | None,
    layout: Layout,
    reference: torch.Tensor,
    moved_references: object,
    index: int,
) -> bool:
    """Whether a layer that only shares the library's grid also shares its token order: a
    change in one corner of the image must move both most in the same cell (a Hiera-style
    unrolled token order, read as rows, would put it elsewhere)."""
    if moved_output is None or not isinstance(moved_references, list):
        return False
    if len(moved_references) <= index or moved_output.shape != output.shape:
        return False

    def change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        energy = (after - before).float().pow(2).sum(1).flatten()
        return (energy - energy.mean()) / energy.norm().clamp_min(1e-30)

    mine = change(layout.to_bchw(output), layout.to_bchw(moved_output))
    theirs = change(reference, moved_references[index])
    agreement = float((mine * theirs).sum() / (mine.norm() * theirs.norm()).clamp_min(1e-30))
    return agreement > _AGREEMENT


def _previous_sibling(name: str, layers: dict[str, nn.Module]) -> str | None:
    """``blocks.10`` for ``blocks.11``: the block before, in a numbered sequence of blocks."""
    parent, _, last = name.rpartition(".")
    if not last.isdigit() or int(last) == 0:
        return None
    before = f"{parent}.{int(last) - 1}" if parent else str(int(last) - 1)
    return before if before in layers else None


def layout_fits(layout: Layout, activation: torch.Tensor) -> bool:
    """Whether ``layout`` (found for one input size) reads ``activation`` exactly."""
    if layout.grid is None:
        return False
    h, w = layout.grid
    shape = tuple(activation.shape)
    if layout.kind == "BCHW":
        return activation.dim() == 4 and shape[2:] == (h, w)
    if layout.kind == "BHWC":
        return activation.dim() == 4 and shape[1:3] == (h, w)
    return layout.kind == "tokens" and activation.dim() == 3 and shape[1] == layout.prefix + h * w


def _try(
    network: nn.Module, candidate: _Candidate, images: torch.Tensor
) -> tuple[Layout | None, bool, str]:
    """``(layout, the score reaches its grid, why not)`` of one candidate, from one forward
    and backward (``layout`` None: the layer cannot be explained at all)."""
    layers = named_layers(network)
    if candidate.name not in layers:
        return None, False, "no such layer"
    module = layers[candidate.name]
    try:
        with (
            torch.no_grad(),
            ActivationCapture({candidate.name: module}, grad_from_layer=True) as cap,
        ):
            output = network(images)
            scores, _ = select_scores(output, None)
    except (TypeError, ValueError, RuntimeError) as exc:
        # RuntimeError: an in-place op after the layer on a view made before it (GhostNet),
        # which the engine's forward would meet too.
        return None, False, str(exc).split("\n")[0]
    calls = cap.activations[candidate.name]
    if len(calls) != 1:
        return None, False, f"runs {len(calls)} times per forward"
    activation = calls[0]
    if activation.shape[0] != images.shape[0]:
        return None, False, f"output {tuple(activation.shape)} does not start with the batch"
    if candidate.layout is not None and layout_fits(candidate.layout, activation):
        layout = candidate.layout
    else:
        module, owners, parent = layer_context(network, candidate.name, layers)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        try:
            layout = detect_layout(activation, candidate.name, size, module, owners, parent)
        except LayoutError as exc:
            return None, False, str(exc).split(";")[0]
    h, w = layout.grid
    if h * w <= 1:
        return None, False, "a 1x1 grid"
    if not scores.requires_grad:
        return layout, False, "the scores do not depend on it"
    (gradient,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
    if gradient is None:
        return layout, False, "the scores do not depend on it"
    if not bool(gradient.ne(0).any()):
        # Zero everywhere (timm zero-initialises some heads): no evidence either way.
        return layout, True, ""
    reached = bool(layout.to_bchw(gradient).abs().sum(1).gt(0).any())
    return layout, reached, "" if reached else "the scores do not reach its grid"


def choose_default_layer(model: nn.Module, images: torch.Tensor) -> DefaultLayer:
    """The layer ``layer=None`` explains in ``model`` for inputs like ``images``
    ``(B, C, H, W)`` (one image is used), and its layout; see the module docstring.

    Leaves no trace on the model (modes, RNG, ``.grad``).

    Raises:
        LayerNotFoundError: no layer with a spatial grid that the scores reach; the message
            lists what was tried and why each was left out.
    """
    network = unwrap_model(model)
    probe = images[:1]
    size = (int(probe.shape[-2]), int(probe.shape[-1]))

    def from_library() -> list[_Candidate]:
        found = library_network(network)
        if found is None:
            return []
        prefix, root, library = found
        root_images = probe if root is network else _input_of(root, lambda: network(probe))
        return [
            _Candidate(f"{prefix}.{c.name}" if prefix else c.name, c.layout, c.source)
            for c in _library_candidates(root, library, root_images)
        ]

    def from_shapes() -> list[_Candidate]:  # only when the library's candidates all failed
        try:
            names = default_layer_candidates(network, lambda: network(probe), size)
        except LayerNotFoundError:
            if not tried:
                raise
            return []
        return [_Candidate(name, None, "shapes (no library metadata)") for name in names]

    tried: list[str] = []
    seen: set[str] = set()
    first_readable: DefaultLayer | None = None
    with preserve_model_state(network), cam_mode():
        for propose in (from_library, from_shapes):
            for candidate in propose():
                if candidate.name in seen:  # the first time a name is proposed is its best
                    continue
                seen.add(candidate.name)
                layout, reached, why = _try(network, candidate, probe)
                if layout is not None and reached:
                    return DefaultLayer(candidate.name, layout, candidate.source)
                if layout is not None and first_readable is None:
                    first_readable = DefaultLayer(candidate.name, layout, candidate.source)
                tried.append(f"{candidate.name!r} ({why})")
    if first_readable is not None:
        log.warning(
            "layer=None: the scores of %s reach none of %s; explaining %r anyway",
            type(network).__name__,
            ", ".join(tried),
            first_readable.name,
        )
        return first_readable
    raise LayerNotFoundError(
        f"{type(network).__name__}: no layer to explain by default; tried {', '.join(tried)}. "
        "Name the layer with layer=... (a block or stage whose output is (B, C, h, w), "
        "(B, h, w, C) or tokens (B, P + h*w, C)), and pass reshape= for another layout"
    )


def library_layout(model: nn.Module, layer: str, images: torch.Tensor) -> Layout | None:
    """How the model library reads the output of the named ``layer`` for inputs like
    ``images``: the same lookup ``layer=None`` makes (:func:`choose_default_layer`'s library
    candidates), keyed by the layer, so that naming the default's layer reads it exactly as
    the default does (prefix tokens and grid from timm / transformers, not guessed from the
    token count). ``None`` where the library says nothing about this layer (then the
    caller falls back to :func:`~lightning_gradcam.core.layouts.detect_layout`).

    Leaves no trace on the model (modes, RNG, ``.grad``)."""
    network = unwrap_model(model)
    found = library_network(network)
    if found is None:
        return None
    prefix, root, library = found
    name = full_layer_name(network, layer)
    if prefix and not name.startswith(prefix + "."):
        return None  # outside the library's network (a head the user added)
    relative = name[len(prefix) + 1 :] if prefix else name
    probe = images[:1]
    with preserve_model_state(network), cam_mode():
        root_images = probe if root is network else _input_of(root, lambda: network(probe))
        for candidate in _library_candidates(root, library, root_images):
            if candidate.name == relative and candidate.layout is not None:
                return candidate.layout
    return None
