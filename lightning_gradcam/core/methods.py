"""CAM weightings: each a pure function of (activation A, gradient G) at one layer.

Shapes: ``A`` and ``G`` are ``(N, C, h, w)``; every method returns ``(N, h, w)`` before the
final ReLU. ``compute_cam`` applies the ReLU and works in float32.

The registry (``CAMMethod`` per name) is the one list of methods: the engine, the callback,
DetectionCAM, the detectron2 hook and config, both command lines, captions, error messages
and ``docs/methods.md`` read it. Adding a method is one function and one
``register_method(name, weighting, label)`` call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CAMMethod",
    "BUILTIN_METHODS",
    "register_method",
    "unregister_method",
    "get_method",
    "method_names",
    "methods_table",
    "compute_cam",
    "normalize_maps",
    "upsample_maps",
    "check_methods",
]

_EPS = 1e-7


def gradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391).

    ``w_c = mean_{ij} G_cij``;  ``L = sum_c w_c A_c``.
    """
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return (weights * activation).sum(dim=1)


def gradcam_plus_plus(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, arXiv:1710.11063), closed form of eq. 19.

    With ``Y = exp(S)`` the higher derivatives are powers of the first, giving

    ``alpha_cij = G_cij^2 / (2 G_cij^2 + sum_ab A_cab G_cij^3)``,
    ``w_c = sum_ij alpha_cij relu(G_cij)``,  ``L = sum_c w_c A_c``.

    ``alpha`` is set to 0 where its denominator is 0 (there the gradient is 0 too). The
    paper's ``dY/dA = exp(S) G`` multiplies every weight of one map by the same positive
    ``exp(S)``; it is left out, since it only scales the map (and overflows float32 past
    ``S = 88``), and maps are compared after normalisation.
    """
    # For G != 0, alpha * relu(G) = relu(G) / (2 + S G) with S = sum_ab A_cab: the same
    # value with two fewer full-size powers (this runs on every detection's full-resolution
    # gradient at image-level detector layers).
    activation_sum = activation.sum(dim=(2, 3), keepdim=True)
    denominator = 2 + activation_sum * gradient
    positive = F.relu(gradient)
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = torch.where(denominator != 0, positive / safe, torch.zeros_like(positive))
    weights = weights.sum(dim=(2, 3), keepdim=True)
    return (weights * activation).sum(dim=1)


def xgradcam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020, arXiv:2008.02312).

    ``w_c = sum_ij (A_cij / sum_ab A_cab) G_cij``;  ``L = sum_c w_c A_c``.
    """
    # No absolute epsilon: it would swamp sum(A) for small activations (a random-init
    # network's ~1e-8) and make the map depend on the activations' scale. A channel with
    # sum(A) == 0 gets weight 0.
    activation_sum = activation.sum(dim=(2, 3), keepdim=True)
    numerator = (activation * gradient).sum(dim=(2, 3), keepdim=True)
    safe = torch.where(activation_sum != 0, activation_sum, torch.ones_like(activation_sum))
    weights = torch.where(activation_sum != 0, numerator / safe, torch.zeros_like(numerator))
    return (weights * activation).sum(dim=1)


def layercam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021): element-wise positive gradients.

    ``L_ij = sum_c relu(G_cij) A_cij``.
    """
    return (F.relu(gradient) * activation).sum(dim=1)


def hirescam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, arXiv:2011.08891): element-wise gradient times activation.

    ``L_ij = sum_c G_cij A_cij``. Unlike Grad-CAM it keeps *where* the gradient is, which
    makes it the instance-specific map at image-level detector layers (as ODAM does,
    Zhao et al., ICLR 2023).
    """
    return (gradient * activation).sum(dim=1)


Weighting = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+.-]*")


@dataclass(frozen=True)
class CAMMethod:
    """One entry of the method registry.

    Attributes:
        name: what users pass in ``methods=`` and ``--methods``; also the TensorBoard tag part
            and the detection command's file-name part.
        weighting: ``(A, G) -> (N, h, w)`` before the final ReLU; None for guided methods.
        label: the human name in captions and legends (``"Grad-CAM++"``).
        suffix: the classification command's file-name part: gradient methods write
            ``heatmap{suffix}.png`` and ``cam{suffix}.png``, guided ones ``{suffix}.png``.
        guided: needs guided backpropagation to the input (``guided.py``).
        base: for guided Grad-CAM(++), the gradient method whose map multiplies the guided
            gradient; None otherwise.
        detectors: whether ``DetectionCAM`` (and the detectron2 hook and command) accept it.
    """

    name: str
    weighting: Weighting | None
    label: str
    suffix: str
    guided: bool = False
    base: str | None = None
    detectors: bool = True


_REGISTRY: dict[str, CAMMethod] = {}


def _add(method: CAMMethod) -> CAMMethod:
    _REGISTRY[method.name] = method
    return method


for _name, _weighting, _label, _suffix in (
    ("gradcam", gradcam, "Grad-CAM", ""),  # the seed's file names: heatmap.png, cam.png
    ("gradcam++", gradcam_plus_plus, "Grad-CAM++", "++"),
    ("xgradcam", xgradcam, "XGrad-CAM", "-xgradcam"),
    ("layercam", layercam, "LayerCAM", "-layercam"),
    ("hirescam", hirescam, "HiResCAM", "-hirescam"),
):
    _add(CAMMethod(_name, _weighting, _label, _suffix))
for _name, _label, _suffix, _base in (
    ("guided_backprop", "guided backprop", "gb", None),
    ("guided_gradcam", "guided Grad-CAM", "cam_gb", "gradcam"),
    ("guided_gradcam++", "guided Grad-CAM++", "cam++_gb", "gradcam++"),
):
    # DetectionCAM runs no backward pass to the input, so detectors refuse guided methods.
    _add(CAMMethod(_name, None, _label, _suffix, guided=True, base=_base, detectors=False))


def _check_weighting(name: str, weighting: object) -> None:
    """Call ``weighting`` once on small random tensors: a wrong signature or output shape
    fails at registration, not in the middle of a training run."""
    if not callable(weighting):
        raise TypeError(
            f"register_method({name!r}, ...): weighting must be a callable (A, G) -> (N, h, w), "
            f"got {type(weighting).__name__}"
        )
    generator = torch.Generator().manual_seed(0)
    activation = torch.rand(2, 3, 4, 5, generator=generator)
    gradient = torch.randn(2, 3, 4, 5, generator=generator)
    try:
        out = weighting(activation, gradient)
    except Exception as exc:
        raise TypeError(
            f"register_method({name!r}, ...): the weighting failed on activation and gradient "
            f"of shape (N, C, h, w) = (2, 3, 4, 5): {type(exc).__name__}: {exc}"
        ) from exc
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor) or shape != (2, 4, 5) or not out.is_floating_point():
        raise TypeError(
            f"register_method({name!r}, ...): the weighting must return a float tensor "
            f"(N, h, w) = (2, 4, 5) for A, G of shape (2, 3, 4, 5), got {shape}"
        )


def register_method(name: str, weighting: Weighting, label: str | None = None) -> CAMMethod:
    """Add a gradient CAM method: ``weighting(A, G) -> (N, h, w)`` with ``A``, ``G`` of shape
    ``(N, C, h, w)`` (the layer's activation and the target's gradient there), before ReLU.

    After this, ``name`` works in ``CAMEngine``, ``GradCAMCallback``, ``DetectionCAM``,
    ``GradCAMHook`` and both commands' ``--methods``. ``label`` (default: ``name``) is used
    in captions; the classification command writes ``heatmap-{name}.png`` and
    ``cam-{name}.png``.

    Raises:
        ValueError: ``name`` is not a non-empty string of letters, digits, ``_ + . -``
            (no ``/``, ``,`` or spaces: it is part of tags, file names and comma lists), or
            it is already registered.
        TypeError: ``weighting`` is not callable, or fails / returns the wrong shape on a
            small ``(2, 3, 4, 5)`` trial input.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"register_method: name must be a non-empty string of letters, digits and _ + . - "
            f"starting with a letter or digit (it becomes part of tags and file names), got "
            f"{name!r}"
        )
    if name in _REGISTRY:
        raise ValueError(
            f"register_method: {name!r} is already registered; choose another name "
            f"(registered: {', '.join(_REGISTRY)})"
        )
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ValueError(f"register_method({name!r}, ...): label must be a non-empty string")
    _check_weighting(name, weighting)
    return _add(CAMMethod(name, weighting, label or name, f"-{name}"))


def unregister_method(name: str) -> None:
    """Remove a method added with :func:`register_method` (built-ins cannot be removed)."""
    if name in BUILTIN_METHODS:
        raise ValueError(f"unregister_method: {name!r} is built in and cannot be removed")
    if name not in _REGISTRY:
        raise ValueError(f"unregister_method: {name!r} is not registered")
    del _REGISTRY[name]


def get_method(name: str) -> CAMMethod:
    """The registry entry of ``name``; ``ValueError`` naming the known methods if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown CAM method {name!r}; choose from {', '.join(method_names())}"
        ) from None


def method_names(detectors: bool = False) -> tuple[str, ...]:
    """Registered method names in registration order; ``detectors=True``: only those that
    detectors accept."""
    return tuple(n for n, m in _REGISTRY.items() if m.detectors or not detectors)


BUILTIN_METHODS: tuple[str, ...] = method_names()


def check_methods(
    methods: str | tuple[str, ...] | list[str], detectors: bool = False
) -> tuple[str, ...]:
    """Validate method names; return them as a de-duplicated tuple, order kept.

    ``detectors=True`` (DetectionCAM, the detectron2 hook, config and command) also refuses
    guided methods, and offers only what detectors accept.
    """
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(dict.fromkeys(methods))
    known = method_names(detectors)  # the registry now, not at import time
    if not methods:
        raise ValueError(f"methods is empty; choose from {', '.join(known)}")
    unknown = [m for m in methods if m not in _REGISTRY]
    if unknown:
        raise ValueError(
            f"unknown CAM method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
        )
    refused = [m for m in methods if detectors and not _REGISTRY[m].detectors]
    if refused:
        raise ValueError(
            f"{', '.join(refused)} need guided backpropagation to the input, which detectors "
            f"do not run; choose from {', '.join(known)}"
        )
    return methods


def methods_table() -> str:
    """The registry as a Markdown table (name, label, kind, detectors, file names)."""
    rows = [
        "| method | label | kind | detectors | `lightning-gradcam` files |",
        "|---|---|---|---|---|",
    ]
    for m in _REGISTRY.values():
        if m.guided:
            kind = f"guided backprop x `{m.base}`" if m.base else "guided backprop"
            files = f"`{m.suffix}`"
        else:
            kind = "gradient weighting"
            files = f"`heatmap{m.suffix}`, `cam{m.suffix}`"
        detectors = "yes" if m.detectors else "no"
        rows.append(f"| `{m.name}` | {m.label} | {kind} | {detectors} | {files} |")
    return "\n".join(rows) + "\n"


def compute_cam(method: str, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``relu(METHOD(A, G))`` in float32: ``(N, C, h, w)`` twice -> ``(N, h, w)``."""
    entry = _REGISTRY.get(method)
    if entry is None or entry.weighting is None:
        gradient_methods = [n for n, m in _REGISTRY.items() if m.weighting is not None]
        raise ValueError(
            f"unknown gradient CAM method {method!r}; choose from {', '.join(gradient_methods)}"
        )
    return F.relu(entry.weighting(activation.float(), gradient.float()))


def normalize_maps(
    maps: torch.Tensor, eps: float = _EPS, flat_at: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-map min-max over the last two dims: ``(L - min) / (max - min + eps * peak)``,
    ``peak = max |L|``.

    ``flat_at``: the same maps at the layer's resolution (``(..., h, w)``, same leading
    dims). Flatness is decided there: where ``max - min <= eps * peak`` at the layer, the
    result is all zeros. Upsampling a flat (e.g. ``1x1``) map leaves float32 jitter of
    ~1e-7 relative, which min-max would otherwise stretch into a picture.

    The epsilon is relative to the map's own magnitude, so the result does not depend on its
    scale (Grad-CAM++ drops a positive factor on that ground, and a randomly initialised
    deep net's maps can be ~1e-9, far below any absolute epsilon). A flat map (all zeros,
    say, when no pixel supports the class) becomes all zeros, never NaN; non-finite values
    are treated as 0.
    """
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    peak = torch.maximum(high.abs(), low.abs())
    denominator = (high - low + eps * peak).clamp_min(torch.finfo(torch.float32).tiny)
    normalized = (maps - low) / denominator
    if flat_at is not None:
        small = torch.nan_to_num(flat_at.float(), nan=0.0, posinf=0.0, neginf=0.0)
        small_low = small.amin(dim=(-2, -1), keepdim=True)
        small_high = small.amax(dim=(-2, -1), keepdim=True)
        small_peak = torch.maximum(small_high.abs(), small_low.abs())
        flat = small_high - small_low <= eps * small_peak
        normalized = normalized.masked_fill(flat, 0.0)
    return normalized


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(..., h, w)`` maps to ``size = (H, W)``."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    resized = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return resized.reshape(*lead, *resized.shape[-2:])
