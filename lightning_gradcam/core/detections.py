"""One explained detection, and how its maps are placed in the image: shared by both detector
sides (torchvision's ``lightning_gradcam.detection`` and ``detectron2_hooks``).

A detection's map is computed at one layer of one of three kinds:

``roi``
    a per-ROI layer (run on the pooled proposal rows, e.g. a 7x7 grid): the map covers the
    proposal box that was pooled, placed there with the geometry ROIAlign pooled it with
    (:func:`paste_in_boxes`);
``head``, ``image``
    a dense layer (a one-stage head at one feature level, a backbone stage, an FPN output):
    the map covers the padded batch the network saw; it is upsampled over it, cropped to the
    image and resized to the pixels the detections are reported in.

:func:`place_maps` does both and marks maps with no positive evidence (zero everywhere after
the ReLU): their ``(H, W)`` map is all zeros and must not be read as "attention outside the
box" (pictures caption it, drift and energy leave it out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .methods import normalize_maps, upsample_maps

__all__ = ["Detection", "paste_in_boxes", "place_maps"]


@dataclass
class Detection:
    """One explained detection, as the detector reports it (boxes, classes and scores of its
    own post-processed output), in the pixels it reports them in (detectron2: the input
    dict's ``height``/``width`` when given, else its ``"image"`` tensor's; torchvision: the
    input image's).

    Attributes:
        image_index: index of the image in the batch.
        rank: row in that image's post-processed output (the detector's own order, not
            necessarily by score).
        box: ``(4,)`` float ``(x0, y0, x1, y1)``, the predicted box.
        class_id: predicted class.
        score: the score the detector reports (softmax probability, sigmoid of the logit).
        target_score: exactly the scalar that was differentiated: the class logit by
            default (before the softmax or sigmoid), or ``score`` itself when asked for.
        level: one-stage feature level (index into the head's levels), else None.
        anchor_index: one-stage anchor (or location) index within the level; detectron2:
            ``(h * W + w) * A + a``; torchvision: the row of the level's flattened head output.
        proposal_index: two-stage proposal index within the image, else None.
        roi_row: two-stage row among all ROIs of the batch.
        proposal_box: two-stage proposal box that was pooled, ``(4,)``, in the output's
            coordinates (scaled as the box).
        layer: the first explained layer; ``maps``/``layer_maps`` are those of this layer.
        maps_by_layer: ``{layer: {method: (H, W) float32 in [0, 1]}}`` (H, W of the image).
        layer_maps_by_layer: ``{layer: {method: (h, w)}}`` at the layer's resolution, after
            ReLU, before normalising (for ``roi`` layers: the ROI grid, e.g. 7x7).
        layer_kinds: ``{layer: "roi" | "head" | "image"}``.
        evidence_by_layer: ``{layer: {method: bool}}``: False where the map has no positive
            evidence (zero everywhere after the ReLU); its map is all zeros and says nothing
            about where the detector looked.
    """

    image_index: int
    rank: int
    box: torch.Tensor
    class_id: int
    score: float
    target_score: float
    level: int | None = None
    anchor_index: int | None = None
    proposal_index: int | None = None
    roi_row: int | None = None
    proposal_box: torch.Tensor | None = None
    layer: str = ""
    maps_by_layer: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    layer_maps_by_layer: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    layer_kinds: dict[str, str] = field(default_factory=dict)
    evidence_by_layer: dict[str, dict[str, bool]] = field(default_factory=dict)

    @property
    def maps(self) -> dict[str, torch.Tensor]:
        """``{method: (H, W)}`` in [0, 1] for the first layer."""
        return self.maps_by_layer[self.layer]

    @property
    def layer_maps(self) -> dict[str, torch.Tensor]:
        """``{method: (h, w)}`` before normalising, for the first layer."""
        return self.layer_maps_by_layer[self.layer]

    @property
    def evidence(self) -> dict[str, bool]:
        """``{method: bool}`` for the first layer: whether its map has positive evidence."""
        return self.evidence_by_layer[self.layer]

    @property
    def no_evidence(self) -> list[str]:
        """The methods whose map at the first layer has no positive evidence."""
        return [method for method, found in self.evidence.items() if not found]


def paste_in_boxes(maps: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Paste ``maps (N, h, w)`` into ``boxes (N, 4)`` on ``(N, H, W)`` zero canvases.

    Pixel ``(x, y)`` (centre ``x + 0.5``) inside box ``(x0, y0, x1, y1)`` samples the map
    bilinearly at ``((x + 0.5 - x0) / (x1 - x0), (y + 0.5 - y0) / (y1 - y0))`` of its extent, the
    geometry ROIAlign pooled it with; pixels outside the box are 0.
    """
    count = maps.shape[0]
    height, width = size
    canvas = maps.new_zeros((count, height, width))
    if count == 0:
        return canvas
    boxes = boxes.to(maps)
    # Only pixels whose centre can fall inside some box are sampled.
    left = max(0, math.floor(float(boxes[:, 0].min()) - 0.5))
    top = max(0, math.floor(float(boxes[:, 1].min()) - 0.5))
    right = min(width, math.ceil(float(boxes[:, 2].max()) + 0.5))
    bottom = min(height, math.ceil(float(boxes[:, 3].max()) + 0.5))
    if right <= left or bottom <= top:
        return canvas
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    xs = torch.arange(left, right, device=maps.device, dtype=maps.dtype) + 0.5
    ys = torch.arange(top, bottom, device=maps.device, dtype=maps.dtype) + 0.5
    gx = (xs[None] - x0[:, None]) / (x1 - x0).clamp(min=1e-6)[:, None] * 2 - 1  # (N, w')
    gy = (ys[None] - y0[:, None]) / (y1 - y0).clamp(min=1e-6)[:, None] * 2 - 1  # (N, h')
    crop_h, crop_w = len(ys), len(xs)
    grid = torch.stack(
        (
            gx[:, None, :].expand(count, crop_h, crop_w),
            gy[:, :, None].expand(count, crop_h, crop_w),
        ),
        dim=-1,
    )
    pasted = F.grid_sample(
        maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[:, 0]
    inside = (gx.abs() <= 1)[:, None, :] & (gy.abs() <= 1)[:, :, None]
    canvas[:, top:bottom, left:right] = pasted * inside
    return canvas


def place_maps(
    raw: torch.Tensor,
    kind: str,
    *,
    out_size: tuple[int, int],
    proposal_box: torch.Tensor | None = None,
    padded_size: tuple[int, int] | None = None,
    image_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One detection's maps ``raw (M, h, w)`` (after the ReLU, one per method) placed in the
    image: ``(maps (M, H, W) in [0, 1], found (M,) bool)`` with ``(H, W) = out_size``.

    ``kind="roi"``: normalised at the ROI grid and pasted into ``proposal_box`` (already in
    the output's pixels). Otherwise the layer covers the padded batch ``padded_size`` that the
    network saw, of which the image is the top-left ``image_size``: upsampled over it, cropped,
    normalised (flatness decided at the layer's resolution) and resized to ``out_size``.
    ``found[m]`` is False when map ``m`` has no positive evidence; that map is exactly zero.
    """
    if kind == "roi":
        if proposal_box is None:
            raise ValueError("a per-ROI map needs the proposal box that was pooled")
        normalised = normalize_maps(raw)
        found = normalised.flatten(1).amax(dim=1) > 0
        full = paste_in_boxes(normalised, proposal_box[None].expand(len(raw), 4), out_size)
    else:
        if padded_size is None or image_size is None:
            raise ValueError("a dense-layer map needs the padded batch size and the image size")
        found = normalize_maps(raw).flatten(1).amax(dim=1) > 0
        height, width = image_size
        full = normalize_maps(upsample_maps(raw, padded_size)[:, :height, :width], flat_at=raw)
        if tuple(out_size) != (height, width):
            full = upsample_maps(full, out_size).clamp(0, 1)
    return full * found[:, None, None], found  # no evidence: exactly zero, never jitter
