"""DetectionCAM: one class-activation map per detection, per layer and per method.

For every top detection of every image, the scalar differentiated is exactly the score the
detector reports for it (the softmax probability of its class at its own proposal for
Faster R-CNN, the sigmoid of its class logit at its own level and anchor for RetinaNet);
``Detection.target_score`` is that scalar and equals ``Detection.score``.

Three kinds of layer, told apart by where the layer sits and what it outputs:

``roi``
    A per-ROI layer of Faster R-CNN (``roi_heads.res5``, ``roi_heads.pooler`` for C4,
    ``roi_heads.box_pooler`` for FPN): one row per proposal. Rows are independent, so one
    backward of the sum of all detection scores gives each detection's gradient in its own
    row. The map, computed on that row, is pasted into the proposal box that was pooled.
    Grad-CAM here is instance-specific by construction.
``head``
    A RetinaNet head layer (``head.cls_subnet.0`` to ``.7``, ``head.cls_score``), called once
    per feature level: a detection is explained at the call of its own level. Gradients are
    batched over the detections of each level (one vmapped backward).
``image``
    An image-level layer (``backbone.res4``, ``backbone.fpn_output3``, ``backbone.bottom_up.res3``
    ...): the whole-image map. Faster R-CNN: the gradient at the pooled rows (one backward,
    as for ``roi``) is pulled back through the pooler alone, by re-running its ROIAlign on
    per-detection copies of the pooled feature with one ROI each (one op); layers upstream of
    the pooler's input go further with batched gradients. RetinaNet: batched gradients through
    the head at the detection's level, then as above.

At ``image`` and ``head`` layers channel-averaged Grad-CAM weights every location with the
same features alike, so it lights every region that resembles the detection, not the
detection itself. The element-wise map ``hirescam`` (gradient times activation, as in ODAM,
Zhao et al., ICLR 2023) keeps where the gradient is and is the instance-specific choice there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes, Instances
from torch import nn

from lightning_gradcam.core.capture import ActivationCapture
from lightning_gradcam.core.gradients import batched_gradients
from lightning_gradcam.core.layers import resolve_layer, unwrap_model
from lightning_gradcam.core.layouts import Reshape, check_reshape, to_feature_maps
from lightning_gradcam.core.methods import (
    GRADIENT_METHODS,
    GUIDED_METHODS,
    check_methods,
    compute_cam,
    normalize_maps,
    upsample_maps,
)
from lightning_gradcam.core.state import cam_mode, preserve_model_state

from .adapters import is_cam_model

__all__ = ["DetectionCAM", "Detection", "LAYER_KINDS"]

LAYER_KINDS = ("roi", "head", "image")

# Elements per chunk of per-detection feature copies in the pooler re-run (256 MB float32).
_COPY_BUDGET = 1 << 26


@dataclass
class Detection:
    """One explained detection. Coordinates are those of the input's ``"image"`` tensor.

    Attributes:
        image_index: index of the image in the batch.
        rank: row in that image's predicted ``Instances`` (0 = highest score).
        box: ``(4,)`` float ``(x0, y0, x1, y1)``, the predicted box.
        class_id: predicted class.
        score: the score the detector reports.
        target_score: the scalar that was differentiated (equals ``score``).
        level: RetinaNet feature level (index into ``head_in_features``), else None.
        anchor_index: RetinaNet anchor index within the level, ``(h * W + w) * A + a``.
        proposal_index: Faster R-CNN proposal index within the image, else None.
        roi_row: Faster R-CNN row among all ROIs of the batch.
        proposal_box: Faster R-CNN proposal box that was pooled, ``(4,)``.
        layer: the first explained layer; ``maps``/``layer_maps`` are those of this layer.
        maps_by_layer: ``{layer: {method: (H, W) float32 in [0, 1]}}`` (H, W of the image).
        layer_maps_by_layer: ``{layer: {method: (h, w)}}`` at the layer's resolution, after
            ReLU, before normalising (for ``roi`` layers: the ROI grid, e.g. 7x7).
        layer_kinds: ``{layer: "roi" | "head" | "image"}``.
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

    @property
    def maps(self) -> dict[str, torch.Tensor]:
        """``{method: (H, W)}`` in [0, 1] for the first layer."""
        return self.maps_by_layer[self.layer]

    @property
    def layer_maps(self) -> dict[str, torch.Tensor]:
        """``{method: (h, w)}`` before normalising, for the first layer."""
        return self.layer_maps_by_layer[self.layer]


class _InputRecorder:
    """Forward hook keeping the positional inputs and the output of a module's first call.

    The output is made grad-requiring if it is not (a fully frozen backbone), the same way
    ``ActivationCapture`` does, so gradients can be taken at it.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.inputs: tuple | None = None
        self.output: torch.Tensor | None = None
        self._handle = None

    def _hook(self, _module, inputs, output):
        if self.inputs is not None:
            return None
        self.inputs = inputs
        if isinstance(output, torch.Tensor) and not output.requires_grad:
            output = output.detach().requires_grad_()
            self.output = output
            return output
        self.output = output
        return None

    def __enter__(self) -> _InputRecorder:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _depends_on(output: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``target`` is on the autograd graph of ``output`` (a walk over grad_fn nodes)."""
    if output is target:
        return True
    goal = target.grad_fn
    stack = [output.grad_fn]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if node is goal or getattr(node, "variable", None) is target:
            return True
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def _is_clone_of(tensor: torch.Tensor, source: torch.Tensor) -> bool:
    """``tensor`` is ``source`` or its direct clone (what ``ActivationCapture`` hands on)."""
    if tensor is source:
        return True
    node = tensor.grad_fn
    if node is None or type(node).__name__ != "CloneBackward0":
        return False
    parent = node.next_functions[0][0]
    return parent is source.grad_fn or getattr(parent, "variable", None) is source


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


class DetectionCAM:
    """Per-detection CAM maps for detectron2 detectors built with the CAM adapters.

    ``cam = DetectionCAM(model, layer="roi_heads.res5", methods=("gradcam", "gradcam++"))``;
    ``out = cam.explain(inputs, max_detections=10)`` gives one list of :class:`Detection` per
    image, highest score first, with ``det.maps[method]`` an ``(H, W)`` map in [0, 1] over the
    input's ``"image"`` tensor.

    Args:
        model: a ``GeneralizedRCNN`` with ``CAMRes5ROIHeads``/``CAMStandardROIHeads`` or a
            ``CAMRetinaNet`` (``to_cam_config`` switches a stock config; checkpoints load
            unchanged). DDP / DataParallel / compile wrappers are unwrapped.
        layer: a dotted module name or a sequence of them (``None``: ``roi_heads.res5`` C4,
            ``roi_heads.box_pooler`` FPN, ``head.cls_subnet.7`` RetinaNet). With several
            layers, ``det.maps_by_layer[layer][method]``; ``det.maps`` is the first layer's.
        methods: any of ``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``hirescam``.
            At image-level and RetinaNet head layers use ``hirescam`` for a map specific to the
            detection (see the module docstring).
        reshape: a callable turning an image-level layer's output into ``(N, C, h, w)``;
            ``(N, h, w, C)`` outputs (ViTDet, Swin backbones) are recognised without it.

    The pass leaves no trace: every submodule's train/eval flag, ``requires_grad``, the RNG
    state, BatchNorm statistics and parameters' ``.grad`` are as before; hooks are removed on
    every path. It runs in eval mode, with grad enabled, outside inference mode and autocast.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | Sequence[str] | None = None,
        methods: str | Sequence[str] = ("gradcam", "gradcam++"),
        reshape: Reshape | None = None,
    ):
        self.model = unwrap_model(model)
        self.reshape = check_reshape(reshape)
        if not is_cam_model(self.model):
            heads = getattr(self.model, "roi_heads", None)
            what = type(heads).__name__ if heads is not None else type(self.model).__name__
            raise TypeError(
                f"DetectionCAM needs a detector built with the CAM adapters, got {what}. Build "
                "it from detectron2_hooks.to_cam_config(cfg) (ROI_HEADS.NAME CAMRes5ROIHeads / "
                "CAMStandardROIHeads, or META_ARCHITECTURE CAMRetinaNet); stock checkpoints "
                "load unchanged."
            )
        self.is_retinanet = getattr(self.model, "cam_provenance", False)
        if layer is None:
            layer = self._default_layer()
        self.layers: tuple[str, ...] = (layer,) if isinstance(layer, str) else tuple(layer)
        if not self.layers:
            raise ValueError("layer is an empty sequence; name at least one layer")
        self.modules = {name: resolve_layer(self.model, name) for name in self.layers}
        self.methods = check_methods(tuple(methods) if not isinstance(methods, str) else methods)
        guided = [m for m in self.methods if m in GUIDED_METHODS]
        if guided:
            raise ValueError(
                f"{', '.join(guided)} need guided backpropagation to the input, which "
                f"DetectionCAM does not run; choose from {', '.join(GRADIENT_METHODS)}"
            )
        if self.is_retinanet:
            self._gate = self.model.head
        else:
            heads = self.model.roi_heads
            self._gate = heads.pooler if hasattr(heads, "pooler") else heads.box_pooler
        self._kind_root = self.model.head if self.is_retinanet else self.model.roi_heads

    def _default_layer(self) -> str:
        if self.is_retinanet:
            return "head.cls_subnet.7"
        return "roi_heads.res5" if hasattr(self.model.roi_heads, "res5") else "roi_heads.box_pooler"

    # ------------------------------------------------------------------ forward

    def _forward(self, inputs: list[dict]) -> tuple[list[Instances], list[tuple[int, int]], tuple]:
        model = self.model
        images = model.preprocess_image(inputs)
        padded = tuple(images.tensor.shape[-2:])
        if self.is_retinanet:
            features = model.backbone(images.tensor)
            features = [features[f] for f in model.head_in_features]
            predictions = model.head(features)
            instances = model.forward_inference(images, features, predictions)
        else:
            instances = model.inference(inputs, do_postprocess=False)
        return instances, list(images.image_sizes), padded

    def explain(self, inputs: list[dict], max_detections: int | None = 10) -> list[list[Detection]]:
        """Explain the top ``max_detections`` detections (all if None) of every image.

        Args:
            inputs: detectron2 inputs, a list of dicts with an ``"image"`` ``(C, H, W)`` tensor
                in the model's input format (as a ``DatasetMapper`` makes them).

        Returns:
            One list per image of :class:`Detection`, highest score first; an image with no
            detection gets ``[]``.

        Raises:
            ValueError: a layer that did not run in this forward, whose output is not a
                ``(N, C, h, w)`` map, or on which the detection scores do not depend.
        """
        if max_detections is not None and max_detections < 0:
            raise ValueError(f"max_detections must be >= 0 or None, got {max_detections}")
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError("inputs must be a non-empty list of detectron2 input dicts")
        model = self.model
        with (
            preserve_model_state(model),
            cam_mode(),
            ActivationCapture(self.modules) as capture,
            _InputRecorder(self._gate) as gate,
        ):
            # Inputs made under inference_mode cannot be saved for backward: copy them here.
            inputs = [{**item, "image": item["image"].clone()} for item in inputs]
            instances, image_sizes, padded = self._forward(inputs)
            selected = self._select(instances, max_detections)
            results: list[list[Detection]] = [[] for _ in inputs]
            if not selected:
                return results
            return self._explain_selected(
                instances, selected, capture, gate, image_sizes, padded, results
            )

    @staticmethod
    def _select(instances: list[Instances], max_detections: int | None) -> list[tuple[int, int]]:
        selected = []
        for image_index, inst in enumerate(instances):
            order = torch.argsort(inst.scores.detach(), descending=True, stable=True)
            if max_detections is not None:
                order = order[:max_detections]
            selected.extend((image_index, int(row)) for row in order)
        return selected

    # ------------------------------------------------------------------ gradients

    def _explain_selected(self, instances, selected, capture, gate, image_sizes, padded, results):
        device = instances[0].scores.device
        image_of = torch.tensor([i for i, _ in selected], device=device)
        scores = torch.stack([instances[i].scores[r] for i, r in selected])
        if not scores.requires_grad:
            raise RuntimeError("detection scores carry no gradient; was the forward run detached?")

        def field(name: str) -> torch.Tensor:
            return torch.stack([instances[i].get(name)[r] for i, r in selected])

        if self.is_retinanet:
            levels = field("cam_level")
            provenance = {"level": levels, "anchor_index": field("cam_anchor_index")}
        else:
            rows = field("cam_roi_row")
            proposal_boxes = field("cam_proposal_box")
            provenance = {
                "proposal_index": field("cam_proposal_index"),
                "roi_row": rows,
                "proposal_box": proposal_boxes,
            }

        self._roi_call: dict[str, int] = {}
        kinds = {name: self._layer_kind(name, capture, gate) for name in self.layers}
        per_layer: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # (A, G), (D, C, h, w)

        if self.is_retinanet:
            for name, kind in kinds.items():
                if kind == "head":
                    if not any(_depends_on(scores, call) for call in capture.activations[name]):
                        self._check_dependence(name, scores, capture.activations[name][0])
                    per_layer[name] = self._head_gradients(
                        capture.activations[name], scores, levels, image_of
                    )
            image_layers = [n for n, k in kinds.items() if k == "image"]
            if image_layers:
                gate_inputs = list(gate.inputs[0])
                gate_grads = {}
                for level in levels.unique().tolist():
                    idx = (levels == level).nonzero()[:, 0]
                    grads = batched_gradients(scores[idx], gate_inputs[level], retain_graph=True)
                    gate_grads[level] = (idx, grads[torch.arange(len(idx)), image_of[idx]])
                for name in image_layers:
                    per_layer[name] = self._pull_back(
                        name, capture, gate_inputs, gate_grads, image_of, scores
                    )
        else:
            roi_layers = [n for n, k in kinds.items() if k == "roi"]
            image_layers = [n for n, k in kinds.items() if k == "image"]
            targets = [capture.activations[n][self._roi_call[n]] for n in roi_layers]
            if image_layers:
                targets.append(gate.output)
            row_grads = self._row_gradients(scores, rows, targets)
            for index, name in enumerate(roi_layers):
                act = targets[index][rows]
                per_layer[name] = (act, row_grads[index])
            if image_layers:
                gate_grads = self._pooler_pullback(
                    row_grads[-1], gate.inputs[0], proposal_boxes, image_of
                )
                for name in image_layers:
                    per_layer[name] = self._pull_back(
                        name, capture, list(gate.inputs[0]), gate_grads, image_of, scores
                    )

        return self._build(
            instances, selected, scores, provenance, kinds, per_layer, image_sizes, padded, results
        )

    def _layer_kind(self, name: str, capture: ActivationCapture, gate: _InputRecorder) -> str:
        calls = capture.activations[name]
        if not calls:
            raise ValueError(
                f"layer {name!r} did not run in this detector's inference forward; choose a "
                "layer on the path to the detection scores (e.g. "
                f"{self._default_layer()!r}, or a backbone stage)"
            )
        for act in calls:
            if act.dim() != 4:
                raise ValueError(
                    f"layer {name!r} outputs shape {tuple(act.shape)}, not a (N, C, h, w) map; "
                    "choose a convolutional block"
                )
        module = self.modules[name]
        inside_root = any(module is m for m in self._kind_root.modules())
        if self.is_retinanet and inside_root:
            levels = len(self.model.head_in_features)
            if len(calls) != levels:
                raise ValueError(
                    f"head layer {name!r} ran {len(calls)} times, expected once per level ({levels})"
                )
            return "head"
        if not self.is_retinanet and inside_root:
            num_rois = gate.output.shape[0]
            for call_index, act in enumerate(calls):
                if act.shape[0] == num_rois:
                    self._roi_call[name] = call_index
                    return "roi"
            raise ValueError(f"ROI-head layer {name!r} never ran on the {num_rois} proposals")
        if len(calls) != 1:
            raise ValueError(
                f"layer {name!r} ran {len(calls)} times in one forward; choose a block that runs "
                "once per batch (a backbone stage, an FPN output) or a per-ROI / head layer"
            )
        return "image"

    @staticmethod
    def _check_dependence(name: str, scores: torch.Tensor, target: torch.Tensor) -> None:
        if not _depends_on(scores, target):
            raise ValueError(
                f"the detection scores do not depend on layer {name!r} (e.g. an RPN or "
                "box-regression layer); choose a layer on the classification path"
            )

    @staticmethod
    def _row_gradients(
        scores: torch.Tensor, rows: torch.Tensor, targets: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Each detection's gradient in its own row of each per-ROI tensor: ``(D, C, h, w)``.

        Rows are independent (every op of the box head is per row in eval mode), so one
        backward of ``sum_d score_d`` gives ``d score_d / d target[row_d]`` in ``row_d``. Two
        detections of one proposal (two classes) share a row, so they go in separate rounds.
        """
        rounds = torch.zeros_like(rows)
        seen: dict[int, int] = {}
        for index, row in enumerate(rows.tolist()):
            rounds[index] = seen.get(row, 0)
            seen[row] = rounds[index].item() + 1
        out = [t.new_zeros((len(rows), *t.shape[1:])) for t in targets]
        for round_index in range(int(rounds.max()) + 1):
            members = (rounds == round_index).nonzero()[:, 0]
            grads = torch.autograd.grad(
                scores[members].sum(), targets, retain_graph=True, allow_unused=True
            )
            for slot, grad in enumerate(grads):
                if grad is not None:
                    out[slot][members] = grad[rows[members]]
        return out

    def _pooler_pullback(
        self,
        row_grads: torch.Tensor,
        pooler_inputs: Sequence[torch.Tensor],
        proposal_boxes: torch.Tensor,
        image_of: torch.Tensor,
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Pull the gradients at the pooled rows back through the pooler alone.

        For detection ``d`` pooled from level ``l``, its gradient at that level's feature of
        its image is the backward of ROIAlign for its one box. The level's ROIAlign is re-run
        on ``D_l`` copies of the feature (copy ``j`` carrying detection ``j``'s image) with one
        ROI each, and one backward gives all ``D_l`` gradients; exact for any pooler type.

        Returns ``{level: (detection indices, gradients (D_l, C, h_l, w_l))}``.
        """
        pooler = self._gate
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
            per_copy = feature[0].numel()
            chunk = max(1, _COPY_BUDGET // max(per_copy, 1))
            pieces = []
            for start in range(0, len(idx), chunk):
                part = idx[start : start + chunk]
                copies = feature[image_of[part]].requires_grad_()  # indexing copies
                rois = torch.cat(
                    [
                        torch.arange(len(part), device=feature.device, dtype=feature.dtype)[
                            :, None
                        ],
                        proposal_boxes[part].to(feature.dtype),
                    ],
                    dim=1,
                )
                pooled = pooler.level_poolers[level](copies, rois)
                (grad,) = torch.autograd.grad(pooled, copies, grad_outputs=row_grads[part])
                pieces.append(grad)
            out[level] = (idx, torch.cat(pieces))
        return out

    def _pull_back(
        self,
        name: str,
        capture: ActivationCapture,
        gate_inputs: list[torch.Tensor],
        gate_grads: dict[int, tuple[torch.Tensor, torch.Tensor]],
        image_of: torch.Tensor,
        scores: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients at an image-level layer from per-detection gradients at the gate tensors
        (the pooler's or the head's inputs): ``(A, G)``, each ``(D, C, h, w)``.

        A layer whose output is itself a gate tensor needs nothing more. A layer upstream goes
        through one batched (vmapped) backward per level, of ``s_j = <gate[img_j], g_j>``,
        whose gradient at the layer is detection ``j``'s.
        """
        act = capture.activations[name][0]
        self._check_dependence(name, scores, act)
        if len(gate_grads) == 1:
            level, (idx, level_grads) = next(iter(gate_grads.items()))
            if _is_clone_of(gate_inputs[level], act):
                order = torch.empty_like(idx)
                order[idx] = torch.arange(len(idx), device=idx.device)
                return [act[i] for i in image_of.tolist()], level_grads[order]
        grad = act.new_zeros((len(image_of), *act.shape[1:]))
        for level, (idx, level_grads) in gate_grads.items():
            gate_tensor = gate_inputs[level]
            if _is_clone_of(gate_tensor, act):
                grad[idx] = level_grads.to(grad.dtype)
                continue
            if not _depends_on(gate_tensor, act):
                continue  # this level does not see the layer: zero gradient
            inner = (gate_tensor[image_of[idx]] * level_grads).flatten(1).sum(dim=1)
            batched = batched_gradients(inner, act, retain_graph=True)  # (D_l, B, C, h, w)
            grad[idx] = batched[torch.arange(len(idx)), image_of[idx]]
        return [act[i] for i in image_of.tolist()], grad

    def _head_gradients(
        self,
        calls: list[torch.Tensor],
        scores: torch.Tensor,
        levels: torch.Tensor,
        image_of: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RetinaNet head layer: detection ``d`` at the call of its level, its image's row.

        Returns ``(A, G)`` as lists per detection (levels differ in size), see ``_build``.
        """
        acts: list[torch.Tensor | None] = [None] * len(scores)
        grads: list[torch.Tensor | None] = [None] * len(scores)
        for level in levels.unique().tolist():
            idx = (levels == level).nonzero()[:, 0]
            batched = batched_gradients(scores[idx], calls[level], retain_graph=True)
            for j, d in enumerate(idx.tolist()):
                acts[d] = calls[level][image_of[d]]
                grads[d] = batched[j, image_of[d]]
        return acts, grads

    # ------------------------------------------------------------------ maps

    def _build(
        self,
        instances,
        selected,
        scores,
        provenance,
        kinds,
        per_layer,
        image_sizes,
        padded,
        results,
    ):
        detections: list[Detection] = []
        values = scores.detach()
        for d, (image_index, row) in enumerate(selected):
            inst = instances[image_index]
            det = Detection(
                image_index=image_index,
                rank=row,
                box=inst.pred_boxes.tensor[row].detach().float().clone(),
                class_id=int(inst.pred_classes[row]),
                score=float(inst.scores[row].detach()),
                target_score=float(values[d]),
                layer=self.layers[0],
                layer_kinds=dict(kinds),
            )
            if self.is_retinanet:
                det.level = int(provenance["level"][d])
                det.anchor_index = int(provenance["anchor_index"][d])
            else:
                det.proposal_index = int(provenance["proposal_index"][d])
                det.roi_row = int(provenance["roi_row"][d])
                det.proposal_box = provenance["proposal_box"][d].detach().float().clone()
            detections.append(det)
            results[image_index].append(det)

        for name in self.layers:
            acts, grads = per_layer[name]
            kind = kinds[name]
            if kind == "image":  # ViTDet / Swin backbones: (N, h, w, C) -> (N, C, h, w)
                acts, grads = to_feature_maps(self.model, name, acts, grads, padded, self.reshape)
            for d, det in enumerate(detections):
                # One detection at a time: level sizes differ for head layers, and small
                # tensors keep the method arithmetic in cache.
                a, g = acts[d][None].detach(), grads[d][None].detach()
                raw = torch.cat([compute_cam(method, a, g) for method in self.methods])  # (M,h,w)
                height, width = image_sizes[det.image_index]
                if kind == "roi":
                    full = paste_in_boxes(
                        normalize_maps(raw),
                        det.proposal_box[None].expand(len(raw), 4),
                        (height, width),
                    )
                else:
                    full = normalize_maps(upsample_maps(raw, padded)[:, :height, :width])
                det.maps_by_layer[name] = dict(zip(self.methods, full.float()))
                det.layer_maps_by_layer[name] = dict(zip(self.methods, raw.float()))
        return results
