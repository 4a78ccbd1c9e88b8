"""The gradient pull-back: every selected detection's gradient at every explained layer.

Three kinds of layer, told apart by where the layer sits and what it outputs
(:func:`locate_layers`):

``roi``
    inside the ROI heads of a two-stage detector, run on the pooled rows (one row per
    proposal). Rows are independent, so one backward of the sum of the targets gives each
    detection's gradient in its own row (:func:`row_gradients`).
``head``
    inside a one-stage dense head, run once per feature level: a detection is explained at
    the call of its own level, with gradients batched over the detections of that level
    (:func:`head_gradients`).
``image``
    anywhere else on the path to the scores (a backbone stage, an FPN output), run once per
    batch. The gradients at the feature reader's inputs (the pooler's or the dense head's) are
    computed per detection first (:func:`pooler_pullback`, or batched through the head), then
    carried further upstream by one batched backward per level (:func:`pull_back_to_layer`).

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
from lightning_gradcam.core.detect import InputRecorder, depends_on, is_clone_of
from lightning_gradcam.core.detect import require_dependence as _require_dependence
from lightning_gradcam.core.gradients import GRADIENT_BUDGET, batched_gradients

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


def require_dependence(name: str, targets: torch.Tensor, activation: torch.Tensor) -> None:
    """Refuse a layer the targets do not depend on (the kernel's check)."""
    _require_dependence(name, targets, activation)


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


# ---------------------------------------------------------------------- gradients


def row_gradients(
    targets: torch.Tensor, rows: torch.Tensor, tensors: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Each detection's gradient in its own row of each per-ROI tensor: ``(D, C, h, w)``.

    Rows are independent (every op of the box head is per row in eval mode), so one
    backward of ``sum_d target_d`` gives ``d target_d / d tensor[row_d]`` in ``row_d``. Two
    detections of one proposal (two classes) share a row, so they go in separate rounds.
    """
    rounds = torch.zeros_like(rows)
    seen: dict[int, int] = {}
    for index, row in enumerate(rows.tolist()):
        rounds[index] = seen.get(row, 0)
        seen[row] = rounds[index].item() + 1
    out = [t.new_zeros((len(rows), *t.shape[1:])) for t in tensors]
    for round_index in range(int(rounds.max()) + 1):
        members = (rounds == round_index).nonzero()[:, 0]
        grads = torch.autograd.grad(
            targets[members].sum(), tensors, retain_graph=True, allow_unused=True
        )
        for slot, grad in enumerate(grads):
            if grad is not None:
                out[slot][members] = grad[rows[members]]
    return out


LevelGradients = dict[int, tuple[torch.Tensor, torch.Tensor]]
"""``{level: (detection indices, gradients (D_l, C, h_l, w_l))}`` at the reader's inputs."""


def pooler_pullback(
    pooler: nn.Module,
    pooled_row_grads: torch.Tensor,
    pooler_inputs: Sequence[torch.Tensor],
    proposal_boxes: torch.Tensor,
    image_of: torch.Tensor,
) -> LevelGradients:
    """Pull the gradients at the pooled rows back through the pooler alone.

    For detection ``d`` pooled from level ``l``, its gradient at that level's feature of
    its image is the backward of ROIAlign for its one box. The level's ROIAlign is re-run
    on ``D_l`` copies of the feature (copy ``j`` carrying detection ``j``'s image) with one
    ROI each, and one backward gives all ``D_l`` gradients; exact for any pooler type.
    """
    if len(pooler.level_poolers) == 1:
        levels = torch.zeros(len(proposal_boxes), dtype=torch.long)
    else:
        levels = assign_boxes_to_levels(
            [Boxes(proposal_boxes)],
            pooler.min_level,
            pooler.max_level,
            pooler.canonical_box_size,
            pooler.canonical_level,
        )
    out = {}
    for level in levels.unique().tolist():
        idx = (levels == level).nonzero()[:, 0].to(image_of.device)
        feature = pooler_inputs[level].detach()
        chunk = max(1, GRADIENT_BUDGET // max(feature[0].numel(), 1))
        pieces = []
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            copies = feature[image_of[part]].requires_grad_()  # indexing copies
            batch_index = torch.arange(len(part), device=feature.device, dtype=feature.dtype)
            rois = torch.cat([batch_index[:, None], proposal_boxes[part].to(feature.dtype)], 1)
            pooled = pooler.level_poolers[level](copies, rois)
            (grad,) = torch.autograd.grad(pooled, copies, grad_outputs=pooled_row_grads[part])
            pieces.append(grad)
        out[level] = (idx, torch.cat(pieces))
    return out


def head_gradients(
    calls: list[torch.Tensor], targets: torch.Tensor, levels: torch.Tensor, image_of: torch.Tensor
) -> LayerEvidence:
    """One-stage head layer: detection ``d`` at the call of its level, its image's row,
    with one batched backward per level."""
    acts: list[torch.Tensor | None] = [None] * len(targets)
    grads: list[torch.Tensor | None] = [None] * len(targets)
    for level in levels.unique().tolist():
        idx = (levels == level).nonzero()[:, 0]
        batched = batched_gradients(targets[idx], calls[level], retain_graph=True)
        for j, d in enumerate(idx.tolist()):
            acts[d] = calls[level][image_of[d]]
            grads[d] = batched[j, image_of[d]]
    return LayerEvidence("head", acts, grads)


def pull_back_to_layer(
    name: str,
    activation: torch.Tensor,
    reader_inputs: Sequence[torch.Tensor],
    reader_grads: LevelGradients | Sequence[LevelGradients],
    selection: SelectedDetections,
) -> LayerEvidence:
    """Gradients at an image-level layer from the per-detection gradients at the reader's
    inputs.

    A layer whose output is itself a reader input needs nothing more. A layer upstream goes
    through one batched (vmapped) backward per level, of ``s_j = <input[img_j], g_j>``, whose
    gradient at the layer is detection ``j``'s. Several ``LevelGradients`` (one per call of
    a cascade's pooler, all on the same ``reader_inputs``) add up: the chain rule over every
    path from the layer to the score.
    """
    require_dependence(name, selection.targets, activation)
    parts = [reader_grads] if isinstance(reader_grads, dict) else list(reader_grads)
    image_of = selection.image_of
    per_detection = [activation[i] for i in image_of.tolist()]
    if len(parts) == 1 and len(parts[0]) == 1:
        level, (idx, level_grads) = next(iter(parts[0].items()))
        if is_clone_of(reader_inputs[level], activation):
            order = torch.empty_like(idx)
            order[idx] = torch.arange(len(idx), device=idx.device)
            return LayerEvidence("image", per_detection, level_grads[order])
    grad = activation.new_zeros((len(image_of), *activation.shape[1:]))
    for part in parts:
        for level, (idx, level_grads) in part.items():
            reader_input = reader_inputs[level]
            if is_clone_of(reader_input, activation):
                grad[idx] += level_grads.to(grad.dtype)
                continue
            if not depends_on(reader_input, activation):
                continue  # this level does not see the layer: zero gradient
            inner = (reader_input[image_of[idx]] * level_grads).flatten(1).sum(dim=1)
            batched = batched_gradients(inner, activation, retain_graph=True)  # (D_l, B, C, h, w)
            grad[idx] += batched[torch.arange(len(idx)), image_of[idx]]
    return LayerEvidence("image", per_detection, grad)


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
    grads = row_gradients(selection.targets, rows, tensors)
    evidence = {
        site.name: LayerEvidence("roi", tensors[i][rows], grads[i])
        for i, site in enumerate(roi_sites)
    }
    if image_sites:
        reader_inputs = list(reader.inputs[0])
        pooled_grads = grads[len(roi_sites) :]
        reader_grads = [
            pooler_pullback(
                detector.feature_reader,
                call_grads,
                reader_inputs,
                _pooled_boxes(call_inputs, origin, selection, len(reader.calls) == 1),
                selection.image_of,
            )
            for (call_inputs, _), call_grads in zip(reader.calls, pooled_grads)
        ]
        evidence.update(
            _image_level_evidence(image_sites, capture, reader_inputs, reader_grads, selection)
        )
    return evidence


def _image_level_evidence(
    image_sites: list[LayerSite],
    capture: ActivationCapture,
    reader_inputs: list[torch.Tensor],
    reader_grads: LevelGradients | Sequence[LevelGradients],
    selection: SelectedDetections,
) -> dict[str, LayerEvidence]:
    """Each image-level layer's evidence, pulled back from the per-detection gradients at
    the feature reader's inputs (``pull_back_to_layer``)."""
    return {
        site.name: pull_back_to_layer(
            site.name, capture.activations[site.name][0], reader_inputs, reader_grads, selection
        )
        for site in image_sites
    }


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
        evidence[site.name] = head_gradients(calls, targets, levels, image_of)
    image_sites = [site for site in sites.values() if site.kind == "image"]
    if image_sites:
        reader_inputs = list(reader.inputs[0])  # the head's per-level features
        reader_grads: LevelGradients = {}
        for level in levels.unique().tolist():
            idx = (levels == level).nonzero()[:, 0]
            grads = batched_gradients(targets[idx], reader_inputs[level], retain_graph=True)
            reader_grads[level] = (idx, grads[torch.arange(len(idx)), image_of[idx]])
        evidence.update(
            _image_level_evidence(image_sites, capture, reader_inputs, reader_grads, selection)
        )
    return evidence
