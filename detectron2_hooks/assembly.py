"""Map assembly: CAM methods applied to each detection's evidence, maps placed in the image.

:func:`assemble_detections` weighs, per detection and per layer, the activation and gradient
from the pull-back (``pullback.py``) with every CAM method (``core.methods``), then places the
map in the image: at a per-ROI layer the map covers the pooled proposal box
(:func:`paste_in_boxes`, the geometry ROIAlign pooled it with); at a head or image-level layer
it is upsampled over the padded batch and cropped to the image. Maps are normalised to [0, 1],
in the pixels detectron2 reports the detections in (the input's ``height``/``width`` when
given, see ``postprocess.py``), and collected into one :class:`Detection` per explained
detection.

No positive evidence: a map that is zero everywhere after the ReLU (no location supports the
detection's score; flat maps normalise to zero too) is recorded as such in
``Detection.evidence_by_layer[layer][method] = False``; its ``(H, W)`` map is all zeros and
must not be read as "attention outside the box" (pictures caption it, drift and energy leave
it out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lightning_gradcam.core.layouts import Reshape, to_feature_maps
from lightning_gradcam.core.methods import compute_cam, normalize_maps, upsample_maps

from .pullback import LayerEvidence
from .selection import SelectedDetections

__all__ = ["Detection", "assemble_detections", "paste_in_boxes"]


@dataclass
class Detection:
    """One explained detection, as detectron2 reports it (``DefaultPredictor``'s boxes,
    classes and scores). Coordinates are the output's: the input dict's ``height``/``width``
    when given, else those of its ``"image"`` tensor.

    Attributes:
        image_index: index of the image in the batch.
        rank: row in that image's post-processed ``Instances`` (what ``model(inputs)``
            returns; rows are in detectron2's order, not necessarily by score).
        box: ``(4,)`` float ``(x0, y0, x1, y1)``, the predicted box.
        class_id: predicted class.
        score: the score detectron2 reports (softmax probability, sigmoid of the logit).
        target_score: exactly the scalar that was differentiated: the class logit
            (``score="logit"``, the default) or ``score`` itself (``score="probability"``).
        level: RetinaNet feature level (index into ``head_in_features``), else None.
        anchor_index: RetinaNet anchor index within the level, ``(h * W + w) * A + a``.
        proposal_index: Faster R-CNN proposal index within the image, else None.
        roi_row: Faster R-CNN row among all ROIs of the batch.
        proposal_box: Faster R-CNN proposal box that was pooled, ``(4,)``, in the output's
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


def _detection_record(selection: SelectedDetections, index: int, layer: str, kinds) -> Detection:
    image_index, row = selection.picks[index]
    inst = selection.forward.instances[image_index]
    fields = selection.origin.detection_fields(index)
    if fields.get("proposal_box") is not None:
        sx, sy = selection.forward.scale(image_index)
        fields["proposal_box"] = fields["proposal_box"] * fields["proposal_box"].new_tensor(
            [sx, sy, sx, sy]
        )
    return Detection(
        image_index=image_index,
        rank=row,
        box=inst.pred_boxes.tensor[row].detach().float().clone(),
        class_id=int(inst.pred_classes[row]),
        score=float(inst.scores[row].detach()),
        target_score=float(selection.targets[index].detach()),
        layer=layer,
        layer_kinds=dict(kinds),
        **fields,
    )


def assemble_detections(
    selection: SelectedDetections,
    evidence: dict[str, LayerEvidence],
    layers: Sequence[str],
    methods: Sequence[str],
    model: nn.Module,
    reshape: Reshape | None = None,
) -> list[list[Detection]]:
    """One list of :class:`Detection` per image of the forward, in selection order.

    ``layers`` fixes the order of ``maps_by_layer``; ``layers[0]`` is ``Detection.layer``.
    Image-level activations and gradients go through one layout first (``reshape``, or the
    one ``core.layouts`` recognises: ViTDet and Swin backbones output ``(N, h, w, C)``).
    """
    kinds = {name: evidence[name].kind for name in layers}
    results: list[list[Detection]] = [[] for _ in selection.forward.instances]
    detections = []
    for index in range(len(selection)):
        det = _detection_record(selection, index, layers[0], kinds)
        detections.append(det)
        results[det.image_index].append(det)
    forward = selection.forward
    padded = forward.padded_size
    for name in layers:
        layer = evidence[name]
        activations, gradients = layer.activations, layer.gradients
        if layer.kind == "image":
            activations, gradients = to_feature_maps(
                model, name, activations, gradients, padded, reshape
            )
        for d, det in enumerate(detections):
            # One detection at a time: level sizes differ for head layers, and small
            # tensors keep the method arithmetic in cache.
            a = activations[d][None].detach()
            g = gradients[d][None].detach()
            raw = torch.cat([compute_cam(method, a, g) for method in methods])  # (M, h, w)
            normalised = normalize_maps(raw)
            found = normalised.flatten(1).amax(dim=1) > 0
            height, width = forward.image_sizes[det.image_index]
            out_size = (forward.output_sizes or forward.image_sizes)[det.image_index]
            if layer.kind == "roi":
                # The pooled box in the output's pixels: pasted there directly.
                full = paste_in_boxes(
                    normalised, det.proposal_box[None].expand(len(raw), 4), out_size
                )
            else:
                full = normalize_maps(upsample_maps(raw, padded)[:, :height, :width], flat_at=raw)
                if tuple(out_size) != (height, width):
                    full = upsample_maps(full, out_size).clamp(0, 1)
            full = full * found[:, None, None]  # no evidence: exactly zero, never jitter
            det.maps_by_layer[name] = dict(zip(methods, full.float()))
            det.layer_maps_by_layer[name] = dict(zip(methods, raw.float()))
            det.evidence_by_layer[name] = dict(zip(methods, (bool(f) for f in found)))
    return results
