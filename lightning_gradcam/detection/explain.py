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
on 16 different proposals cost one backward through the ROI head. A one-stage detection at an
image-level layer takes its gradient at its level's head input on a crop of the head's
receptive field (``dense_head.py``, ``core.detect.window``; RetinaNet's head, exact), then one
batched backward per level carries them to the layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.transform import resize_boxes

from ..core.capture import ActivationCapture
from ..core.detect import (
    InputRecorder,
    attach_maps,
    check_choose,
    check_options,
    chosen_rows,
    level_gradients,
    own_gradients,
    pooler_pullback,
    pull_back_to_layer,
)
from ..core.detect.options import Choose
from ..core.detections import Detection
from ..core.detector_sides import detector_side
from ..core.layers import full_layer_name, resolve_layer, unwrap_model
from ..core.layouts import Reshape
from ..core.state import cam_mode, preserve_model_state
from .dense_head import HeadWindow, fpn_stems, head_input_gradients, head_window
from .heads import Family, Origin, detector_family, recording_postprocess, recover_origins

# ``own_gradients`` is the kernel's; imported from here by the YOLO side.
__all__ = ["DetectionCAM", "DETECTION_LAYER_HINT", "own_gradients"]

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


class DetectionCAM:
    """Per-detection Grad-CAM / Grad-CAM++ for torchvision's detectors.

    ``cam = DetectionCAM(model, layer=None, methods=("gradcam", "gradcam++"))`` for a
    ``FasterRCNN`` (incl. ``MaskRCNN``, ``KeypointRCNN``), ``RetinaNet``, ``FCOS`` or
    ``SSD`` (incl. SSDlite); ``cam.explain(images, max_detections=10)`` gives one list of
    :class:`~lightning_gradcam.core.detections.Detection` per image: the model's own first
    ``max_detections`` detections, boxes in the input image's pixels, each with
    ``target_score`` (exactly the scalar differentiated) and ``maps[method]`` ``(H, W)`` in
    [0, 1] at the image's own size.

    Example::

        cam = DetectionCAM(model, layer="backbone.body.layer3", methods=("hirescam",))
        for det in cam.explain(images, max_detections=5)[0]:
            print(det.class_id, det.score, det.maps["hirescam"].shape)

    Args:
        model: the detector (any mode; it is put back exactly as it was).
        layer: a dotted layer name, or a sequence of them (``Detection.maps_by_layer`` has
            one entry each); None: ``roi_heads.box_roi_pool`` (two-stage),
            ``head.classification_head.conv`` (RetinaNet, FCOS), the backbone's first
            feature block (SSD).
        methods: CAM methods from the registry (not the guided ones).
        score: ``"logit"`` (default: the detection's class logit, before the softmax or
            sigmoid) or ``"probability"`` (the score the model reports).
        reshape: a callable turning an image-level layer's output into ``(N, C, h, w)``,
            for layouts the engine cannot tell by itself.
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
        score: str = "logit",
        reshape: Reshape | None = None,
    ):
        self.model = model
        self.network = unwrap_model(model)
        self.family: Family = detector_family(self.network)
        options = check_options(methods, score, reshape)
        self.methods, self.score, self.reshape = options.methods, options.score, options.reshape
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
        self.modules = {
            n: resolve_layer(self.network, n, hint=DETECTION_LAYER_HINT) for n in self.layers
        }
        self.window: HeadWindow | None = (
            None if self.family.two_stage else head_window(self.network)
        )
        self.stems = () if self.window is None else fpn_stems(self.network)

    def explain(
        self, images, max_detections: int | None = 10, *, choose: Choose | None = None
    ) -> list[list[Detection]]:
        """One list of detections per image (see the class docstring).

        ``choose``: instead of the first ``max_detections``, the detections to explain,
        chosen from the model's outputs (one dict of ``boxes``/``labels``/``scores`` per
        image, boxes in the input's pixels): it returns, per image, output rows; each list of
        detections is then in that order.
        """
        images = _check_images(images)
        check_choose(choose)
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
                InputRecorder(
                    None if self.window is None else self.window.entry, calls=64, grad_output=False
                ) as head_inputs,
                ActivationCapture(modules, grad_from_layer=single) as capture,
                contextlib.ExitStack() as stems,
            ):
                stem_inputs = [
                    stems.enter_context(InputRecorder(stem, grad_output=False))
                    for stem in self.stems
                ]
                if single:  # autograd records only what runs after the layer
                    with torch.no_grad():
                        outputs = network(inputs)
                else:
                    outputs = network(inputs)
            counts = [len(o["scores"]) for o in outputs]
            ranks = chosen_rows(choose, outputs, counts, max_detections)
            origins = recover_origins(network, self.family, record, ranks)
            image_sizes = [tuple(int(s) for s in size) for size in record.args[-1]]
            original_sizes = [tuple(int(s) for s in image.shape[-2:]) for image in images]
            results = [
                [self._record(o, outputs[o.image_index], image_sizes, original_sizes) for o in per]
                for per in origins
            ]
            flat = [(o, d) for per_o, per_d in zip(origins, results) for o, d in zip(per_o, per_d)]
            if not flat:
                return results
            pooled = None
            if pooler is not None:
                pooled_name = next(n for n, m in modules.items() if m is pooler)
                pooled = (capture.activations[pooled_name], pool_inputs.inputs)
            sizes = {
                "out_sizes": original_sizes,
                "image_sizes": image_sizes,
                "padded_size": padded.input_size(),
            }
            level_inputs = [inputs[0] for inputs, _ in head_inputs.calls]
            # the FPN's inner features, before each level's output convolution
            inner = [r.inputs[0] if r.inputs else None for r in stem_inputs]
            for name in self.layers:
                self._explain_layer(
                    name,
                    capture.activations[name],
                    flat,
                    len(images),
                    record,
                    pooled,
                    sizes,
                    level_inputs,
                    inner,
                )
        return results

    def _target(self, origin: Origin) -> torch.Tensor:
        return origin.logit if self.score == "logit" else origin.score

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
            target_score=float(self._target(origin).detach()),
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
            if act.dim() != 4 and not (self.reshape is not None and len(calls) == 1):
                raise ValueError(
                    f"layer {name!r} outputs {tuple(act.shape)}, not a (N, C, h, w) feature map; "
                    "choose a convolutional layer, or pass reshape=, " + DETECTION_LAYER_HINT
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

    def _pooled_pullback(self, name, activation, origins: list[Origin], pooled) -> torch.Tensor:
        """Two-stage detections' gradients at an image-level layer: each detection's gradient
        at its own pooled row (one backward through the ROI head for all), pulled back
        through ROIAlign for that row alone (the kernel's ``pooler_pullback``, with
        torchvision's ``MultiScaleRoIAlign`` as the pooler), then to the layer."""
        (rows_out,), (features, proposals, image_shapes) = pooled
        targets = torch.stack([self._target(o) for o in origins])
        rows = own_gradients(
            targets, [o.roi_row for o in origins], rows_out, name, hint=DETECTION_LAYER_HINT
        )
        roi_pool = self.network.roi_heads.box_roi_pool
        names = [k for k in features if k in roi_pool.featmap_names]
        levels = [features[k] for k in names]

        def pool(copies, boxes, _images):
            # Every image's shape: the pooler's scales come from the largest.
            return roi_pool(dict(zip(names, copies)), boxes, image_shapes)

        boxes = torch.stack([proposals[o.image_index][o.proposal_index] for o in origins])
        image_of = torch.tensor([o.image_index for o in origins], device=rows.device)
        at_levels = pooler_pullback(pool, rows, levels, boxes.detach(), image_of)
        return pull_back_to_layer(
            name, activation, levels, at_levels, image_of, None, DETECTION_LAYER_HINT
        )

    def _windowed(self, name, activation, origins: list[Origin], level_inputs, inner, record):
        """One-stage detections' gradients at an image-level layer: each one's gradient at
        its level's head input on a crop (the kernel's windowed head), then one batched
        backward per level to the layer; None where the head cannot be windowed (the caller
        then goes back through the whole head)."""
        window = self.window
        shapes = [tuple(t.shape[-2:]) for t in level_inputs]
        if (
            window is None
            or self.score != "logit"  # a probability goes through the sigmoid: dense path
            or shapes != [tuple(t.shape[-2:]) for t in record.level_logits]
        ):
            return None
        read = head_input_gradients(
            window,
            level_inputs,
            [o.level for o in origins],
            [o.image_index for o in origins],
            [o.anchor_index for o in origins],
            [o.label for o in origins],
            torch.stack([o.logit.detach() for o in origins]),
            stems=self.stems,
            stem_inputs=inner,
            activation=activation,
        )
        if read is None:
            return None
        readers, at_readers = read
        image_of = torch.tensor([o.image_index for o in origins], device=activation.device)
        targets = torch.stack([o.logit for o in origins])
        return pull_back_to_layer(
            name, activation, readers, at_readers, image_of, targets, DETECTION_LAYER_HINT
        )

    def _explain_layer(
        self, name, calls, flat, num_images, record, pooled, sizes, level_inputs=(), inner=()
    ) -> None:
        kind = self._kind(name, calls, num_images, record)
        origins = [origin for origin, _ in flat]
        # A list, not a stacked tensor: each level's backward then reads its own graph only.
        targets = [self._target(o) for o in origins]
        owners = [o.roi_row if kind == "roi" else o.image_index for o in origins]
        if kind == "head":
            levels = [o.level for o in origins]
            acts, grads = level_gradients(
                targets, levels, owners, calls, name=name, hint=DETECTION_LAYER_HINT
            )
        else:
            activation = calls[0]
            acts = [activation[owner] for owner in owners]
            grads = None
            if kind == "image" and self.family.two_stage:
                grads = self._pooled_pullback(name, activation, origins, pooled)
            elif kind == "image":  # None where the head cannot be windowed
                grads = self._windowed(name, activation, origins, level_inputs, inner, record)
            if grads is None:
                # One-stage: a level's detections go back through their level's head only.
                groups = None if self.family.two_stage else [o.level or 0 for o in origins]
                grads = own_gradients(
                    targets, owners, activation, name, hint=DETECTION_LAYER_HINT, groups=groups
                )
        attach_maps(
            [det for _, det in flat],
            name,
            kind,
            acts,
            grads,
            self.methods,
            model=self.network,
            reshape=self.reshape,
            device="cpu",
            **sizes,
        )
