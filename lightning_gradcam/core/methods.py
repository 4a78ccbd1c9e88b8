"""CAM weightings: each a pure function of (activation A, gradient G) at one layer.

Shapes: ``A`` and ``G`` are ``(N, C, h, w)``; every method returns ``(N, h, w)`` before the
final ReLU. ``compute_cam`` applies the ReLU and works in float32. Adding a method is one
function here and one entry in ``GRADIENT_METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "GRADIENT_METHODS",
    "GUIDED_METHODS",
    "ALL_METHODS",
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


GRADIENT_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
}
#: Methods that need guided backpropagation to the input (see ``guided.py``).
GUIDED_METHODS: tuple[str, ...] = ("guided_backprop", "guided_gradcam", "guided_gradcam++")
ALL_METHODS: tuple[str, ...] = (*GRADIENT_METHODS, *GUIDED_METHODS)


def check_methods(methods: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate method names; return them as a de-duplicated tuple, order kept."""
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(dict.fromkeys(methods))
    known = (*GRADIENT_METHODS, *GUIDED_METHODS)  # the registry now, not at import time
    if not methods:
        raise ValueError(f"methods is empty; choose from {', '.join(known)}")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(
            f"unknown CAM method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
        )
    return methods


def compute_cam(method: str, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``relu(METHOD(A, G))`` in float32: ``(N, C, h, w)`` twice -> ``(N, h, w)``."""
    try:
        weighting = GRADIENT_METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown gradient CAM method {method!r}; choose from {', '.join(GRADIENT_METHODS)}"
        ) from None
    return F.relu(weighting(activation.float(), gradient.float()))


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
