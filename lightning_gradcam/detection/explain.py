"""DetectionCAM for torchvision detectors: one class-activation map per final detection.

For each detection the model reports (its own eval forward, its own boxes, scores and labels,
in its own order), the scalar differentiated is that detection's own class logit, recovered
from the proposal row or anchor it came from (``heads.py``). Its gradient at the explained
layer is taken by ``torch.autograd.grad`` and weighed with the CAM methods
(``core.methods``, e.g. Grad-CAM: ``relu(sum_c mean_hw(dy/dA_c) * A_c)``, Selvaraju et al.,
ICCV 2017; Grad-CAM++: Chattopadhay et al., WACV 2018). Three kinds of layer:

``roi`` (two-stage, the default ``roi_heads.box_roi_pool``)
    the pooled rows, one per proposal: the map is the detection's own (its proposal's row),
    pasted into the proposal box that was pooled (``core.detections.paste_in_boxes``);
``head`` (one-stage dense head, default ``head.classification_head.conv``)
    run once per feature level: a detection is explained at its own level's call;
``image`` (a backbone stage; SSD's default)
    one call on the padded batch.

At ``head`` and ``image`` layers channel-averaged Grad-CAM lights every region with the
same features; ``hirescam`` (element-wise gradient times activation, as ODAM does) is the
instance-specific map there.

Rows of a batch are independent in eval mode (proposal rows in the ROI head, images in the
backbone), so the targets whose rows differ share one backward of their sum: 16 detections
on 16 different proposals cost one backward through the ROI head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models.detection.transform import resize_boxes

from ..core.capture import ActivationCapture
from ..core.detect import InputRecorder
from ..core.detections import Detection, place_maps
from ..core.detector_sides import detector_side
from ..core.gradients import GRADIENT_BUDGET
from ..core.layers import full_layer_name, resolve_layer, unwrap_model
from ..core.methods import check_methods, compute_cam
from ..core.state import cam_mode, preserve_model_state
from .heads import Family, Origin, detector_family, recording_postprocess, recover_origins

__all__ = ["DetectionCAM", "DETECTION_LAYER_HINT"]

DETECTION_LAYER_HINT = (
    "e.g. 'roi_heads.box_roi_pool' (Faster/Mask/Keypoint R-CNN), "
    "'head.classification_head.conv' (RetinaNet, FCOS) or a backbone stage such as "
    "'backbone.body.layer3'"
)

# The capture name of a two-stage pooler recorded for image-level layers.
_POOLED = "\0pooled"


def _check_images(images) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
        raise TypeError(
            "images must be a list of (3, H, W) float tensors (torchvision's detector input), "
            f"got {type(images).__name__}"
            + (f" of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else "")
        )
    if len(images) == 0:
        raise ValueError("images is empty; pass at least one (3, H, W) image")
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"image {index} is {shape}; torchvision detectors take (3, H, W) float images "
                "in [0, 1] (they normalise and resize them themselves)"
            )
        if not image.is_floating_point():
            raise ValueError(
                f"image {index} is {image.dtype}; pass float images in [0, 1] "
                "(e.g. image.float() / 255)"
            )
    return list(images)


def _first_parameter_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def own_gradients(
    targets: Sequence[torch.Tensor], owners: Sequence[int], activation: torch.Tensor, name: str
) -> torch.Tensor:
    """Each target's gradient at its own row of ``activation``: ``(D, *activation.shape[1:])``.

    Target ``d`` depends on row ``owners[d]`` of ``activation`` only. The ``k``-th target of
    every row goes into round ``k``; one backward of each round's sum gives every member its
    own gradient (rows are independent), and the rounds share one batched backward
    (``is_grads_batched``), in chunks that keep the gradient under a memory budget.
    """
    count = len(targets)
    seen: dict[int, int] = {}
    occurrence = []
    for owner in owners:
        occurrence.append(seen.get(owner, 0))
        seen[owner] = occurrence[-1] + 1
    rounds_of = torch.tensor(occurrence, dtype=torch.long, device=activation.device)
    rows_of = torch.tensor(list(owners), dtype=torch.long, device=activation.device)
    stacked = torch.stack(list(targets)).reshape(-1)
    rounds = stacked.new_zeros(max(occurrence) + 1).index_add(0, rounds_of, stacked)
    chunk = max(1, GRADIENT_BUDGET // max(1, activation.numel()))
    out = activation.new_zeros((count, *activation.shape[1:]))
    for start in range(0, len(rounds), chunk):
        part = rounds[start : start + chunk]
        grads = _round_gradients(part, activation)
        if grads is None:
            raise ValueError(
                f"the detection scores do not depend on layer {name!r} (e.g. an RPN, "
                "box-regression or mask layer); choose a layer on the classification path, "
                + DETECTION_LAYER_HINT
            )
        members = torch.nonzero((rounds_of >= start) & (rounds_of < start + len(part))).flatten()
        out[members] = grads[rounds_of[members] - start, rows_of[members]].to(out)
    return out


def _round_gradients(scores: torch.Tensor, activation: torch.Tensor) -> torch.Tensor | None:
    if len(scores) == 1:
        (grad,) = torch.autograd.grad(scores[0], activation, retain_graph=True, allow_unused=True)
        return None if grad is None else grad[None]
    try:
        (grads,) = torch.autograd.grad(
            scores,
            activation,
            grad_outputs=torch.eye(len(scores), dtype=scores.dtype, device=scores.device),
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        return grads
    except RuntimeError:  # an op on the path has no batching rule: one backward per round
        parts = [_round_gradients(score[None], activation) for score in scores]
        return None if parts[0] is None else torch.cat(parts)


class DetectionCAM:
    """Per-detection Grad-CAM / Grad-CAM++ for torchvision's detectors.

    ``cam = DetectionCAM(model, layer=None, methods=("gradcam", "gradcam++"))`` for a
    ``FasterRCNN`` (incl. ``MaskRCNN``, ``KeypointRCNN``), ``RetinaNet``, ``FCOS`` or
    ``SSD`` (incl. SSDlite); ``cam.explain(images, max_detections=10)`` gives one list of
    :class:`~lightning_gradcam.core.detections.Detection` per image: the model's own first
    ``max_detections`` detections, boxes in the input image's pixels, each with
    ``target_score`` (the class logit differentiated) and ``maps[method]`` ``(H, W)`` in
    [0, 1] at the image's own size.

    Args:
        model: the detector (any mode; it is put back exactly as it was).
        layer: a dotted layer name, or a sequence of them (``Detection.maps_by_layer`` has
            one entry each); None: ``roi_heads.box_roi_pool`` (two-stage),
            ``head.classification_head.conv`` (RetinaNet, FCOS), the backbone's first
            feature block (SSD).
        methods: CAM methods from the registry (not the guided ones).
    """

    def __new__(cls, model: nn.Module, *args, **kwargs):
        # A framework's own side (Ultralytics YOLO), imported only when such a model comes.
        build = detector_side(model)
        if build is not None:
            return build(model, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        layer: str | Sequence[str] | None = None,
        methods: str | Sequence[str] = ("gradcam", "gradcam++"),
    ):
        self.model = model
        self.network = unwrap_model(model)
        self.family: Family = detector_family(self.network)
        self.methods = check_methods(
            tuple(methods) if not isinstance(methods, str) else methods, detectors=True
        )
        names = (
            [self.family.default_layer]
            if layer is None
            else [layer]
            if isinstance(layer, str)
            else list(layer)
        )
        if not names:
            raise ValueError("layer is an empty sequence; pass a layer name or None")
        self.layers = [full_layer_name(self.network, n, hint=DETECTION_LAYER_HINT) for n in names]
        self._pooled = None
        self.modules = {
            n: resolve_layer(self.network, n, hint=DETECTION_LAYER_HINT) for n in self.layers
        }

    def explain(
        self,
        images,
        max_detections: int | None = 10,
        *,
        choose: Callable[[list[dict[str, torch.Tensor]]], Sequence[Sequence[int]]] | None = None,
    ) -> list[list[Detection]]:
        """One list of detections per image (see the class docstring).

        ``choose``: instead of the first ``max_detections``, the detections to explain,
        chosen from the model's outputs (one dict of ``boxes``/``labels``/``scores`` per
        image, boxes in the input's pixels): it returns, per image, output rows; each list of
        detections is then in that order.
        """
        images = _check_images(images)
        if max_detections is not None and max_detections < 0:
            raise ValueError(f"max_detections must be >= 0 or None, got {max_detections}")
        network = self.network
        device = _first_parameter_device(network)
        with preserve_model_state(network), cam_mode():
            inputs = [
                image.detach().clone().to(device=device, dtype=torch.float32) for image in images
            ]
            single = len(self.layers) == 1
            modules = dict(self.modules)
            pooler = network.roi_heads.box_roi_pool if self.family.two_stage else None
            if pooler is not None and all(m is not pooler for m in modules.values()):
                modules[_POOLED] = pooler  # image-level layers pull back through its rows
            with (
                recording_postprocess(network, self.family) as record,
                InputRecorder(network.backbone, grad_output=False) as padded,
                InputRecorder(pooler, grad_output=False) as pool_inputs,
                ActivationCapture(modules, grad_from_layer=single) as capture,
            ):
                if single:  # autograd records only what runs after the layer
                    with torch.no_grad():
                        outputs = network(inputs)
                else:
                    outputs = network(inputs)
            if choose is None:
                limit = max_detections
                ranks = [list(range(len(o["scores"])))[:limit] for o in outputs]
            else:
                ranks = [[int(r) for r in rows] for rows in choose(outputs)]
                if len(ranks) != len(images):
                    raise ValueError(f"choose returned {len(ranks)} lists for {len(images)} images")
            origins = recover_origins(network, self.family, record, ranks)
            image_sizes = [tuple(int(s) for s in size) for size in record.args[-1]]
            original_sizes = [tuple(int(s) for s in image.shape[-2:]) for image in images]
            results = [
                [self._record(o, outputs[o.image_index], image_sizes, original_sizes) for o in per]
                for per in origins
            ]
            flat = [(o, d) for per_o, per_d in zip(origins, results) for o, d in zip(per_o, per_d)]
            if flat:
                if pooler is not None:
                    pooled_name = next(n for n, m in modules.items() if m is pooler)
                    self._pooled = (capture.activations[pooled_name], pool_inputs.inputs)
                try:
                    for name in self.layers:
                        self._explain_layer(
                            name,
                            capture.activations[name],
                            flat,
                            len(images),
                            record,
                            padded.input_size(),
                            image_sizes,
                            original_sizes,
                        )
                finally:
                    self._pooled = None
        return results

    def _record(self, origin: Origin, output: dict, image_sizes, original_sizes) -> Detection:
        proposal_box = None
        if origin.proposal_box is not None:
            index = origin.image_index
            proposal_box = resize_boxes(
                origin.proposal_box[None].float(), image_sizes[index], original_sizes[index]
            )[0]
        return Detection(
            image_index=origin.image_index,
            rank=origin.rank,
            box=output["boxes"][origin.rank].detach().float().cpu().clone(),
            class_id=int(output["labels"][origin.rank]),
            score=float(output["scores"][origin.rank].detach()),
            target_score=float(origin.logit.detach()),
            level=origin.level,
            anchor_index=origin.anchor_index,
            proposal_index=origin.proposal_index,
            roi_row=origin.roi_row,
            proposal_box=None if proposal_box is None else proposal_box.cpu(),
            layer=self.layers[0],
        )

    def _kind(self, name: str, calls: list[torch.Tensor], num_images: int, record) -> str:
        if not calls:
            raise ValueError(
                f"layer {name!r} did not run in the detector's eval forward; choose a layer on "
                "the path to the class scores, " + DETECTION_LAYER_HINT
            )
        for act in calls:
            if act.dim() != 4:
                raise ValueError(
                    f"layer {name!r} outputs {tuple(act.shape)}, not a (N, C, h, w) feature map; "
                    "choose a convolutional layer, " + DETECTION_LAYER_HINT
                )
        rows = sum(len(p) for p in record.args[2]) if self.family.two_stage else None
        if (
            len(calls) == 1
            and rows is not None
            and name.startswith("roi_heads.")
            and calls[0].shape[0] == rows
        ):
            return "roi"
        if all(act.shape[0] == num_images for act in calls):
            if len(calls) == 1:
                return "image"
            levels = (
                len(record.args[1][0])
                if not self.family.two_stage and self.family.name != "ssd"
                else None
            )
            if levels == len(calls):
                return "head"
        raise ValueError(
            f"layer {name!r} ran {len(calls)} times in one forward with batch sizes "
            f"{[int(a.shape[0]) for a in calls]}; a detection can be explained at a per-ROI "
            "layer (run once on the proposals), a one-stage head layer (once per level) or an "
            "image-level layer (once), " + DETECTION_LAYER_HINT
        )

    def _pooler_pullback(
        self, name: str, activation: torch.Tensor, origins: list[Origin]
    ) -> torch.Tensor:
        """Two-stage detections' gradients at an image-level layer: ``(D, C, h, w)``.

        Each detection's gradient at its own pooled row (one backward through the ROI head
        for all), then through ROIAlign for that row alone: the pooler is run again on the
        recorded features with only the detections' proposal boxes (ROIAlign pools every box
        on its own, so each row is the one the detection was pooled from), and one batched
        backward carries the D rows' gradients up to the layer. Backpropagating each score
        through all the proposals' rows instead costs one full backward per detection.
        """
        (pooled,), (features, proposals, image_shapes) = self._pooled[0], self._pooled[1]
        rows = own_gradients(
            [o.logit for o in origins], [o.roi_row for o in origins], pooled, name
        )  # (D, C, 7, 7)
        boxes: list[list[torch.Tensor]] = [[] for _ in proposals]
        slots = []
        for origin in origins:
            slots.append((origin.image_index, len(boxes[origin.image_index])))
            boxes[origin.image_index].append(proposals[origin.image_index][origin.proposal_index])
        starts = [0]
        for image_boxes in boxes:
            starts.append(starts[-1] + len(image_boxes))
        box_lists = [torch.stack(b) if b else proposals[i][:0] for i, b in enumerate(boxes)]
        repooled = self.network.roi_heads.box_roi_pool(features, box_lists, image_shapes)
        count = len(origins)
        positions = torch.tensor([starts[image] + k for image, k in slots], device=rows.device)
        out = activation.new_zeros((count, *activation.shape[1:]))
        chunk = max(1, GRADIENT_BUDGET // max(1, activation.numel(), repooled.numel()))
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            grad_outputs = rows.new_zeros((stop - start, *repooled.shape))
            picks = torch.arange(stop - start, device=rows.device)
            grad_outputs[picks, positions[start:stop]] = rows[start:stop].to(rows)
            try:
                (grads,) = torch.autograd.grad(
                    repooled,
                    activation,
                    grad_outputs=grad_outputs,
                    is_grads_batched=True,
                    retain_graph=True,
                    allow_unused=True,
                )
            except RuntimeError:  # no batching rule on the path: one backward per detection
                parts = [
                    torch.autograd.grad(
                        repooled, activation, grad_outputs=g, retain_graph=True, allow_unused=True
                    )[0]
                    for g in grad_outputs
                ]
                grads = None if parts[0] is None else torch.stack(parts)
            if grads is None:
                raise ValueError(
                    f"the detection scores do not depend on layer {name!r}; choose a layer "
                    "on the classification path, " + DETECTION_LAYER_HINT
                )
            images = torch.tensor([o.image_index for o in origins[start:stop]], device=grads.device)
            out[start:stop] = grads[picks.to(grads.device), images].to(out)
        return out

    def _explain_layer(
        self, name, calls, flat, num_images, record, padded_size, image_sizes, original_sizes
    ) -> None:
        kind = self._kind(name, calls, num_images, record)
        if kind == "head":
            groups = {}
            for index, (origin, _det) in enumerate(flat):
                groups.setdefault(origin.level, []).append(index)
            work = [(calls[level], members) for level, members in groups.items()]
        else:
            work = [(calls[0], list(range(len(flat))))]
        for activation, members in work:
            owners = [
                flat[i][0].roi_row if kind == "roi" else flat[i][0].image_index for i in members
            ]
            if kind == "image" and self.family.two_stage:
                grads = self._pooler_pullback(name, activation, [flat[i][0] for i in members])
            else:
                targets = [flat[i][0].logit for i in members]
                grads = own_gradients(targets, owners, activation, name)
            for j, i in enumerate(members):
                origin, det = flat[i]
                a = activation[owners[j]][None].detach()
                g = grads[j][None]
                raw = torch.cat([compute_cam(m, a, g) for m in self.methods])
                full, found = place_maps(
                    raw,
                    kind,
                    out_size=original_sizes[origin.image_index],
                    proposal_box=None
                    if det.proposal_box is None
                    else det.proposal_box.to(raw.device),
                    padded_size=padded_size,
                    image_size=image_sizes[origin.image_index],
                )
                det.maps_by_layer[name] = dict(zip(self.methods, full.float().cpu()))
                det.layer_maps_by_layer[name] = dict(zip(self.methods, raw.float().cpu()))
                det.evidence_by_layer[name] = dict(zip(self.methods, (bool(f) for f in found)))
                det.layer_kinds[name] = kind
