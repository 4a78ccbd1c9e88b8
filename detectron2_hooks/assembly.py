"""Map assembly: CAM methods applied to each detection's evidence, maps placed in the image.

:func:`assemble_detections` builds the :class:`Detection` records from detectron2's
instances and hands each layer's activations and gradients (``pullback.py``) to the kernel's
``attach_maps``, which weighs them with every CAM method (``core.methods``) and places the
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

from collections.abc import Sequence

from torch import nn

from lightning_gradcam.core.detect import attach_maps
from lightning_gradcam.core.detections import Detection, paste_in_boxes
from lightning_gradcam.core.layouts import Reshape

from .pullback import LayerEvidence
from .selection import SelectedDetections

# The record and the placement live in ``core.detections``, shared with the torchvision side;
# ``detectron2_hooks.assembly.Detection`` and ``.paste_in_boxes`` keep working.
__all__ = ["Detection", "assemble_detections", "paste_in_boxes"]


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
    for name in layers:
        layer = evidence[name]
        attach_maps(
            detections,
            name,
            layer.kind,
            layer.activations,
            layer.gradients,
            methods,
            out_sizes=forward.output_sizes or forward.image_sizes,
            image_sizes=forward.image_sizes,
            padded_size=forward.padded_size,
            model=model,
            reshape=reshape,
        )
    return results
