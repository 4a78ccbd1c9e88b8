"""How a map moved, and how much of it lies on the object: numbers from ``(N, H, W)`` maps.

Framework-free (torch only). The Lightning callback and the detectron2 hook both use these on
maps from the same images at two points in training.

Drift (per image ``i``, maps ``a_i`` and ``b_i`` flattened over pixels):

    drift_i = 1 - pearson(a_i, b_i)
            = 1 - sum((a - mean a)(b - mean b)) / sqrt(sum((a - mean a)^2) sum((b - mean b)^2))

It lies in [0, 2]: 0 for the same pattern (whatever its scale or offset, so min-max
normalisation does not matter), 1 for unrelated patterns, 2 for an inverted one. A flat map
(no variance) has no pattern: drift is 0 if both maps are flat, 1 if only one is.

Energy share (per image, map ``m`` >= 0 and region ``R``):

    share_i = sum_{p in R} m_i(p) / sum_p m_i(p)      (0 for an all-zero map)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["map_drift", "box_masks", "energy_share", "energy_in_boxes", "pointing_hits"]

_EPS = 1e-12


def _check_maps(maps: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{name} must be a (N, H, W) tensor of maps, got {shape}")
    return torch.nan_to_num(maps.detach().double(), nan=0.0, posinf=0.0, neginf=0.0)


def map_drift(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``1 - Pearson correlation`` per map pair: ``(N, H, W)`` twice -> ``(N,)`` float32 in
    [0, 2]. See the module docstring for the definition and the flat-map convention."""
    a = _check_maps(current, "current")
    b = _check_maps(reference, "reference")
    if a.shape != b.shape:
        raise ValueError(
            f"current {tuple(a.shape)} and reference {tuple(b.shape)} maps differ in shape; "
            "compare maps of the same images at the same size"
        )
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    var_a = a.pow(2).sum(dim=1)
    var_b = b.pow(2).sum(dim=1)
    flat_a = var_a <= _EPS
    flat_b = var_b <= _EPS
    corr = (a * b).sum(dim=1) / (var_a * var_b).sqrt().clamp_min(_EPS)
    drift = (1.0 - corr).clamp(0.0, 2.0)
    drift = torch.where(flat_a | flat_b, torch.ones_like(drift), drift)
    drift = torch.where(flat_a & flat_b, torch.zeros_like(drift), drift)
    return drift.float()


def box_masks(
    boxes: torch.Tensor | Sequence[torch.Tensor | Sequence[Sequence[float]]],
    size: tuple[int, int],
) -> torch.Tensor:
    """Boolean region masks ``(N, H, W)`` from boxes ``(x0, y0, x1, y1)`` in pixels.

    ``boxes`` is ``(N, 4)`` (one box per map) or a sequence of N ``(M_i, 4)`` (the union of an
    image's boxes; ``M_i`` may be 0). Coordinates are continuous, as in detectron2 and
    ``make_shapes``: pixel ``(y, x)`` is inside when its centre ``(x + 0.5, y + 0.5)`` lies in
    ``[x0, x1] x [y0, y1]``.
    """
    height, width = int(size[0]), int(size[1])
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (N, 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}")
        # One box per map: all maps at once (a whole validation batch per call).
        x0, y0, x1, y1 = boxes.detach().float().cpu().unbind(dim=1)
        inside_x = (xs >= x0[:, None]) & (xs <= x1[:, None])
        inside_y = (ys >= y0[:, None]) & (ys <= y1[:, None])
        return inside_y[:, :, None] & inside_x[:, None, :]
    per_image = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    masks = torch.zeros(len(per_image), height, width, dtype=torch.bool)
    for index, image_boxes in enumerate(per_image):
        for x0, y0, x1, y1 in image_boxes.detach().float().cpu().tolist():
            inside_x = (xs >= x0) & (xs <= x1)
            inside_y = (ys >= y0) & (ys <= y1)
            masks[index] |= inside_y[:, None] & inside_x[None, :]
    return masks


def energy_share(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's total inside its region: ``(N, H, W)`` maps and ``(N, H, W)``
    boolean (or 0/1) masks -> ``(N,)`` float32 in [0, 1]. Negative map values count as 0."""
    m = _check_maps(maps, "maps").clamp_min(0.0)
    if not isinstance(masks, torch.Tensor) or masks.shape != maps.shape:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(
            f"masks must have the maps' shape {tuple(maps.shape)}, got {shape}; resize the "
            "masks to the maps' size (the input image size)"
        )
    region = masks.to(device=m.device).bool()
    total = m.sum(dim=(1, 2))
    inside = (m * region).sum(dim=(1, 2))
    share = torch.where(total > _EPS, inside / total.clamp_min(_EPS), torch.zeros_like(total))
    return share.float()


def energy_in_boxes(
    maps: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor | Sequence[Sequence[float]]],
) -> torch.Tensor:
    """``energy_share`` with regions given as boxes (see ``box_masks``): ``(N,)``."""
    masks = box_masks(boxes, tuple(maps.shape[-2:]))
    return energy_share(maps, masks)


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
    ECCV 2016): ``(N,)`` bool, whether the maximum of ``maps[i]`` ``(N, H, W)`` lies inside
    ``masks[i]`` ``(N, H, W)`` bool. A tie for the maximum counts as a hit when any of the
    tied pixels is inside (the paper's tolerance, without its 15-pixel margin); a map that is
    zero everywhere has no maximum to point with and never hits."""
    maps = _check_maps(maps, "maps")
    masks = torch.as_tensor(masks).to(device=maps.device, dtype=torch.bool)
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks {tuple(masks.shape)} must have the maps' shape {tuple(maps.shape)}"
        )
    peak = maps.flatten(1).amax(dim=1)
    at_peak = (maps >= peak[:, None, None]) & (peak[:, None, None] > 0)
    return (at_peak & masks).flatten(1).any(dim=1)
