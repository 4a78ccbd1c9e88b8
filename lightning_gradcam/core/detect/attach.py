"""Attach maps to detections: the CAM methods on each detection's (activation, gradient), the
map placed in its image (``core.detections.place_maps``) and stored on its record."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..detections import Detection, place_maps
from ..layouts import Reshape, to_feature_maps
from ..methods import compute_cam

__all__ = ["attach_maps"]


def attach_maps(
    detections: Sequence[Detection],
    layer: str,
    kind: str,
    activations: Sequence[torch.Tensor] | torch.Tensor,
    gradients: Sequence[torch.Tensor] | torch.Tensor,
    methods: Sequence[str],
    *,
    out_sizes: Sequence[tuple[int, int]],
    image_sizes: Sequence[tuple[int, int]],
    padded_size: tuple[int, int] | None,
    model: nn.Module | None = None,
    reshape: Reshape | None = None,
    device: torch.device | str | None = None,
) -> None:
    """Fill ``maps_by_layer[layer]``, ``layer_maps_by_layer[layer]``,
    ``evidence_by_layer[layer]`` and ``layer_kinds[layer]`` of every detection.

    Detection ``d``'s activation and gradient are ``activations[d]`` and ``gradients[d]``,
    each ``(C, h, w)`` (``h, w`` may differ between detections: a head's levels). At an
    ``image`` layer they first go through one layout (``reshape``, or the one
    ``core.layouts`` recognises in ``model``'s layer: ``(N, h, w, C)`` ViTDet / Swin
    outputs). ``kind="roi"`` maps are pasted into ``det.proposal_box``; others are upsampled
    over ``padded_size`` and cropped to ``image_sizes[image]``; all are resized to
    ``out_sizes[image]``. ``device``: where the stored maps go (None: where they were made).
    """
    if not len(detections):
        return
    if kind == "image" and model is not None:
        activations, gradients = to_feature_maps(
            model, layer, list(activations), torch.stack(list(gradients)), padded_size, reshape
        )
    for d, det in enumerate(detections):
        # One detection at a time: level sizes differ for head layers, and small tensors
        # keep the method arithmetic in cache.
        a = activations[d][None].detach()
        g = gradients[d][None].detach()
        raw = torch.cat([compute_cam(method, a, g) for method in methods])  # (M, h, w)
        box = det.proposal_box
        full, found = place_maps(
            raw,
            kind,
            out_size=out_sizes[det.image_index],
            proposal_box=None if box is None else box.to(raw.device),
            padded_size=padded_size,
            image_size=image_sizes[det.image_index],
        )
        full, raw = full.float(), raw.float()
        if device is not None:
            full, raw = full.to(device), raw.to(device)
        det.maps_by_layer[layer] = dict(zip(methods, full))
        det.layer_maps_by_layer[layer] = dict(zip(methods, raw))
        det.evidence_by_layer[layer] = dict(zip(methods, (bool(f) for f in found)))
        det.layer_kinds[layer] = kind
