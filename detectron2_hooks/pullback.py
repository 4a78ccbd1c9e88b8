"""Where each explained layer sits in a detectron2 detector, and the gradients there, from
the detection kernel (``lightning_gradcam.core.detect``). This module keeps only what is
detectron2's: which module is the head or the pooler, which pooler call a cascade's
detections come from, the boxes each call pooled, and ``ROIPooler`` as the kernel's pooler.

Three kinds of layer, told apart by where the layer sits and what it outputs
(:func:`locate_layers`):

``roi``
    inside the ROI heads of a two-stage detector, run on the pooled rows (one row per
    proposal). Rows are independent, so one backward of the sum of the targets gives each
    detection's gradient in its own row (the kernel's ``own_gradients``).
``head``
    inside a one-stage dense head, run once per feature level: a detection is explained at
    the call of its own level (``level_gradients``).
``image``
    anywhere else on the path to the scores (a backbone stage, an FPN output), run once per
    batch. Two-stage: the gradients at the pooled rows, pulled back through the pooler alone
    (``pooler_pullback``) and further upstream (``pull_back_to_layer``). One-stage: one
    backward per level's detections, through that level's part of the head only
    (``own_gradients(groups=levels)``).

:func:`gather_evidence` runs the right steps for a detector and returns, per layer, the
activations and gradients the CAM methods weigh (``assembly.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes
from torch import nn

from lightning_gradcam.core.capture import ActivationCapture
from lightning_gradcam.core.detect import (
    InputRecorder,
    depends_on,
    level_gradients,
    own_gradients,
    pooler_pullback,
    pull_back_to_layer,
    require_dependence,
)

from .detector import DetectorParts
from .selection import AnchorOrigin, ProposalOrigin, SelectedDetections

__all__ = [
    "InputRecorder",
    "LayerEvidence",
    "LayerSite",
    "gather_evidence",
    "locate_layers",
]


@dataclass(frozen=True)
class LayerSite:
    """Where an explained layer sits: its kind and the recorded call that holds the detections.

    Attributes:
        name: the layer's dotted name.
        kind: ``"roi"``, ``"head"`` or ``"image"`` (module docstring).
        call: for ``roi`` layers, the index of the recorded call made on the pooled rows
            (C4's ``res5`` also runs on the final boxes for masks/keypoints; a cascade's
            ``box_pooler`` runs once per stage and is explained at the last stage's call,
            the adapters' ``cam_pooler_call``); else 0.
    """

    name: str
    kind: str
    call: int = 0


@dataclass(frozen=True)
class LayerEvidence:
    """Per detection, the activation and its gradient at one layer, each ``(C, h, w)``
    (``h, w`` differ between detections at ``head`` layers: levels differ in size)."""

    kind: str
    activations: Sequence[torch.Tensor]
    gradients: Sequence[torch.Tensor]


# ---------------------------------------------------------------------- where layers sit


def locate_layers(
    detector: DetectorParts,
    modules: dict[str, nn.Module],
    capture: ActivationCapture,
    reader: InputRecorder,
) -> dict[str, LayerSite]:
    """The :class:`LayerSite` of every explained layer, from what ran in the forward.

    Raises:
        ValueError: a layer that did not run, whose output is not ``(N, C, h, w)``, or that
            ran a number of times its kind does not allow.
    """
    return {
        name: _locate(detector, name, module, capture.activations[name], reader)
        for name, module in modules.items()
    }


def _locate(
    detector: DetectorParts,
    name: str,
    module: nn.Module,
    calls: list[torch.Tensor],
    reader: InputRecorder,
) -> LayerSite:
    if not calls:
        raise ValueError(
            f"layer {name!r} did not run in this detector's inference forward; choose a "
            "layer on the path to the detection scores (e.g. "
            f"{detector.default_layer!r}, or a backbone stage)"
        )
    for act in calls:
        if act.dim() != 4:
            raise ValueError(
                f"layer {name!r} outputs shape {tuple(act.shape)}, not a (N, C, h, w) map; "
                "choose a convolutional block"
            )
    in_head = any(module is m for m in detector.head.modules())
    if in_head and not detector.is_two_stage:
        levels = len(detector.model.head_in_features)
        if len(calls) != levels:
            raise ValueError(
                f"head layer {name!r} ran {len(calls)} times, expected once per level ({levels})"
            )
        return LayerSite(name, "head")
    if in_head:
        num_rois = reader.output.shape[0]
        matching = [i for i, act in enumerate(calls) if act.shape[0] == num_rois]
        if not matching:
            raise ValueError(f"ROI-head layer {name!r} never ran on the {num_rois} proposals")
        if detector.reader_calls == 1:
            return LayerSite(name, "roi", matching[0])
        return _cascade_site(detector, name, module, matching)
    if len(calls) != 1:
        raise ValueError(
            f"layer {name!r} ran {len(calls)} times in one forward; choose a block that runs "
            "once per batch (a backbone stage, an FPN output) or a per-ROI / head layer"
        )
    return LayerSite(name, "image")


def _cascade_site(
    detector: DetectorParts, name: str, module: nn.Module, matching: list[int]
) -> LayerSite:
    """A cascade's per-ROI layer: the last stage's pooler call, or a layer of the last
    stage's box head. Every stage pools its own boxes (the previous stage's regression), and
    a detection's box and per-ROI map are the last stage's: an earlier stage's map would be
    pasted into a box it never pooled, so those layers are refused."""
    last = detector.reader_calls - 1
    if module is detector.feature_reader:
        return LayerSite(name, "roi", matching[last])
    last_head = detector.head.box_head[last]
    if any(module is m for m in last_head.modules()):
        return LayerSite(name, "roi", matching[0])
    raise ValueError(
        f"layer {name!r} belongs to an earlier cascade stage, which pooled other boxes than "
        f"the detection's; explain the last stage's per-ROI layer 'roi_heads.box_pooler' (its "
        f"call {last}), a layer of 'roi_heads.box_head.{last}', or an image-level layer"
    )


# ---------------------------------------------------------------------- detectron2's parts


def _pooler(reader: nn.Module):
    """detectron2's ``ROIPooler`` as the kernel's pooler callable."""

    def pool(features, boxes, _images):
        return reader(list(features), [Boxes(b) for b in boxes])

    return pool


def _pooler_levels(reader: nn.Module, boxes: torch.Tensor) -> torch.Tensor:
    """The level ``ROIPooler`` reads each box from (its own assignment)."""
    if len(reader.level_poolers) == 1:
        return torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    return assign_boxes_to_levels(
        [Boxes(boxes)],
        reader.min_level,
        reader.max_level,
        reader.canonical_box_size,
        reader.canonical_level,
    )


# ---------------------------------------------------------------------- per detector


def gather_evidence(
    detector: DetectorParts,
    sites: dict[str, LayerSite],
    selection: SelectedDetections,
    capture: ActivationCapture,
    reader: InputRecorder,
) -> dict[str, LayerEvidence]:
    """``{layer: LayerEvidence}`` for every explained layer."""
    if isinstance(selection.origin, ProposalOrigin):
        return _two_stage_evidence(detector, sites, selection, selection.origin, capture, reader)
    return _one_stage_evidence(sites, selection, selection.origin, capture, reader)


def _two_stage_evidence(
    detector: DetectorParts,
    sites: dict[str, LayerSite],
    selection: SelectedDetections,
    origin: ProposalOrigin,
    capture: ActivationCapture,
    reader: InputRecorder,
) -> dict[str, LayerEvidence]:
    roi_sites = [site for site in sites.values() if site.kind == "roi"]
    image_sites = [site for site in sites.values() if site.kind == "image"]
    rows = origin.roi_row
    tensors = [capture.activations[site.name][site.call] for site in roi_sites]
    if image_sites:
        # The pooled rows of every pooler call the scores depend on (a cascade: one per
        # stage, each stage at its own boxes; else the one call).
        tensors.extend(output for _, output in reader.calls)
    grads = own_gradients(selection.targets, rows, tensors, missing="zero")
    evidence = {
        site.name: LayerEvidence("roi", tensors[i][rows], grads[i])
        for i, site in enumerate(roi_sites)
    }
    if image_sites:
        reader_inputs = list(reader.inputs[0])
        pooled_grads = grads[len(roi_sites) :]
        reader_grads: list = [None] * len(reader_inputs)
        for (call_inputs, _), call_grads in zip(reader.calls, pooled_grads):
            # A cascade's calls pool the same features: their gradients add up (chain rule).
            boxes = _pooled_boxes(call_inputs, origin, selection, len(reader.calls) == 1)
            at_levels = pooler_pullback(
                _pooler(detector.feature_reader),
                call_grads,
                reader_inputs,
                boxes,
                selection.image_of,
                levels=_pooler_levels(detector.feature_reader, boxes),
            )
            reader_grads = [
                g if total is None else total if g is None else total + g
                for total, g in zip(reader_grads, at_levels)
            ]
        evidence.update(
            _image_level_evidence(image_sites, capture, reader_inputs, reader_grads, selection)
        )
    return evidence


def _image_level_evidence(
    image_sites: list[LayerSite],
    capture: ActivationCapture,
    reader_inputs: list[torch.Tensor],
    reader_grads: Sequence[torch.Tensor | None],
    selection: SelectedDetections,
) -> dict[str, LayerEvidence]:
    """Each image-level layer's evidence, pulled back from the per-detection gradients at
    the feature reader's inputs (``pull_back_to_layer``)."""
    evidence = {}
    for site in image_sites:
        activation = capture.activations[site.name][0]
        require_dependence(site.name, selection.targets, activation)
        grads = pull_back_to_layer(
            site.name, activation, reader_inputs, reader_grads, selection.image_of, None
        )
        evidence[site.name] = LayerEvidence(
            "image", [activation[i] for i in selection.image_of.tolist()], grads
        )
    return evidence


def _pooled_boxes(
    call_inputs: tuple,
    origin: ProposalOrigin,
    selection: SelectedDetections,
    only_call: bool,
) -> torch.Tensor:
    """``(D, 4)`` the box each detection was pooled at in one pooler call: the adapters'
    ``cam_proposal_box`` for the one call, else read from the call's own box lists (a
    cascade's earlier stages pooled the previous stage's boxes)."""
    if only_call:
        return origin.proposal_box
    box_lists = call_inputs[1]
    return torch.stack(
        [
            box_lists[image].tensor[index]
            for image, index in zip(selection.image_of.tolist(), origin.proposal_index.tolist())
        ]
    ).detach()


def _one_stage_evidence(
    sites: dict[str, LayerSite],
    selection: SelectedDetections,
    origin: AnchorOrigin,
    capture: ActivationCapture,
    reader: InputRecorder,
) -> dict[str, LayerEvidence]:
    targets, levels, image_of = selection.targets, origin.level, selection.image_of
    evidence = {}
    for site in sites.values():
        if site.kind != "head":
            continue
        calls = capture.activations[site.name]
        if not any(depends_on(targets, call) for call in calls):
            require_dependence(site.name, targets, calls[0])
        acts, grads = level_gradients(targets, levels, image_of, calls, name=site.name)
        evidence[site.name] = LayerEvidence("head", acts, grads)
    for site in sites.values():
        if site.kind == "image":
            # A level's detections go back through their level's part of the head only.
            activation = capture.activations[site.name][0]
            grads = own_gradients(targets, image_of, activation, site.name, groups=levels)
            evidence[site.name] = LayerEvidence(
                "image", [activation[i] for i in image_of.tolist()], grads
            )
    return evidence
