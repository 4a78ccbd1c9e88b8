"""Per-detection Grad-CAM for Ultralytics YOLO detectors (YOLOv8, YOLO11 ``Detect`` heads).

What is Ultralytics' here, and only that: which module is the head (the last module of
``DetectionModel.model``, a ``Detect``), how a candidate maps to a row of its raw output
(anchor ``i`` of the concatenated levels is level ``l`` when it falls in that level's
``h_l * w_l`` block; its class logit is ``preds["scores"][b, class, i]``, before the
sigmoid Ultralytics applies), and Ultralytics' own ``non_max_suppression`` on the decoded
output, called with ``return_idxs=True`` so each kept detection names its anchor.

The scalar differentiated for a detection is its anchor's own class logit; its gradient at
the Detect head's input for the anchor's level (the default) or at a named layer is taken
with ``torch.autograd.grad`` (never ``.backward()``) and weighed by the CAM methods
(``core.methods``; Grad-CAM: Selvaraju et al., ICCV 2017; Grad-CAM++: Chattopadhay et al.,
WACV 2018). At the head's input only the head is in the autograd graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.capture import ActivationCapture
from ..core.detect import receptive_radius
from ..core.detect.graph import require_dependence
from ..core.detections import Detection, place_maps
from ..core.layers import full_layer_name, resolve_layer
from ..core.methods import check_methods, compute_cam
from ..core.state import cam_mode, preserve_model_state
from ..detection.explain import own_gradients
from .windows import windowed_gradients

__all__ = ["YOLODetectionCAM", "is_ultralytics_model", "HEAD_INPUT"]

#: ``layer=`` value for the Detect head's input at the anchor's own level (the default).
HEAD_INPUT = "head_input"
_HINT = "e.g. layer=None (the Detect head's input at the detection's level) or 'model.15'"
# Ultralytics' letterbox fill (114 of 255), used to pad images to the model's stride.
_PAD_VALUE = 114 / 255
_REFUSED = {
    "SegmentationModel": "segment",
    "PoseModel": "pose",
    "OBBModel": "OBB",
    "WorldModel": "YOLO-World",
    "YOLOEModel": "YOLOE",
    "RTDETRDetectionModel": "RT-DETR",
}


def is_ultralytics_model(model: object) -> bool:
    """Whether ``model`` is an Ultralytics model or its ``YOLO`` wrapper (no import needed)."""
    return type(model).__module__.split(".")[0] == "ultralytics"


def _detection_model(model: nn.Module) -> nn.Module:
    network = model
    if type(network).__name__ in {"YOLO", "Model"} and hasattr(network, "model"):
        network = network.model
    name = type(network).__name__
    if name == "ClassificationModel":
        raise TypeError(
            "this is a YOLO classification model: explain it with CAMEngine or "
            "GradCAMCallback (the classification task), not DetectionCAM"
        )
    if name in _REFUSED:
        raise TypeError(
            f"{name} ({_REFUSED[name]}) is not explained yet: DetectionCAM takes Ultralytics "
            "detection models (DetectionModel: YOLOv8, YOLO11 detect)"
        )
    if name != "DetectionModel":
        raise TypeError(f"{name} is not an Ultralytics DetectionModel")
    head = network.model[-1]
    if type(head).__name__ != "Detect":
        raise TypeError(f"the model's last module is {type(head).__name__}, not a Detect head")
    if getattr(head, "end2end", False):
        raise TypeError(
            "end-to-end (NMS-free) heads are not explained yet; set model.model[-1].end2end "
            "= False to use the one-to-many head with NMS"
        )
    return network


def _check_images(images) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    if isinstance(images, torch.Tensor) or not isinstance(images, Sequence) or not images:
        raise TypeError("images must be a non-empty list of (3, H, W) float tensors in [0, 1]")
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image {index} is {shape}; pass (3, H, W) RGB float images in [0, 1]")
        if not image.is_floating_point():
            raise ValueError(f"image {index} is {image.dtype}; pass floats in [0, 1] (x / 255)")
    return list(images)


class _HeadInputs:
    """Forward pre-hook on the Detect head: its per-level inputs become grad-requiring
    leaves, and grad mode turns on from there (the backbone runs without a graph)."""

    def __init__(self, head: nn.Module):
        self.head = head
        self.levels: list[torch.Tensor] = []
        self._handle = None

    def _hook(self, _module, args):
        torch.set_grad_enabled(True)
        self.levels = [x.detach().float().requires_grad_() for x in args[0]]
        return (list(self.levels),)

    def __enter__(self) -> _HeadInputs:
        self._handle = self.head.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.remove()


class YOLODetectionCAM:
    """Per-detection Grad-CAM for an Ultralytics ``DetectionModel`` or ``YOLO`` wrapper.

    Reached through ``lightning_gradcam.DetectionCAM(yolo)``.

    Example::

        from ultralytics import YOLO
        from lightning_gradcam import DetectionCAM

        cam = DetectionCAM(YOLO("yolo11n.yaml"), methods=("gradcam", "hirescam"))
        dets = cam.explain([image], max_detections=5, conf=0.25)
        dets[0][0].maps["gradcam"]  # (H, W) in [0, 1]

    Args:
        model: the Ultralytics model (any mode; it is put back exactly as it was).
        layer: None (the Detect head's input at each detection's own level) or a dotted
            layer name (``"model.15"``) run once per image batch.
        methods: CAM methods from the registry (not the guided ones).
        conf, iou: ``non_max_suppression`` thresholds (Ultralytics' predict defaults).

    At the head's input, detections of one image whose windows there do not overlap share
    one backward (``yolo/windows.py``); ``cam.windowed = False`` gives each its own round
    (the same maps, slower).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        methods: str | Sequence[str] = ("gradcam", "gradcam++"),
        conf: float = 0.25,
        iou: float = 0.7,
    ):
        self.model = model
        self.network = _detection_model(model)
        self.head = self.network.model[-1]
        self.methods = check_methods(
            tuple(methods) if not isinstance(methods, str) else methods, detectors=True
        )
        if not 0 <= conf <= 1 or not 0 <= iou <= 1:
            raise ValueError(f"conf and iou must be in [0, 1], got conf={conf}, iou={iou}")
        self.conf, self.iou = float(conf), float(iou)
        if layer is None or layer == HEAD_INPUT:
            self.layer, self.module = HEAD_INPUT, None
        else:
            self.layer = full_layer_name(self.network, layer, hint=_HINT)
            self.module = resolve_layer(self.network, self.layer, hint=_HINT)
        self.layers = [self.layer]
        # Detections with disjoint windows share a backward (windows.py); False: one round per
        # detection of an image, as the other detector sides do (the tests compare the two).
        self.windowed = True

    def _batch(self, images: list[torch.Tensor], device) -> torch.Tensor:
        stride = int(max(32, int(self.network.stride.max())))
        height = max(int(i.shape[1]) for i in images)
        width = max(int(i.shape[2]) for i in images)
        height, width = -(-height // stride) * stride, -(-width // stride) * stride
        padded = [
            F.pad(i.float(), (0, width - i.shape[2], 0, height - i.shape[1]), value=_PAD_VALUE)
            for i in images
        ]
        return torch.stack(padded).to(device)

    def explain(
        self,
        images,
        max_detections: int | None = 10,
        *,
        choose: Callable[[list[dict[str, torch.Tensor]]], Sequence[Sequence[int]]] | None = None,
    ) -> list[list[Detection]]:
        """Per image, Ultralytics' NMS detections for the model's raw output, in its order
        (the first ``max_detections``, or the rows ``choose(outputs)`` names, ``outputs``
        one ``{"boxes", "labels", "scores"}`` dict per image); boxes in the input's pixels
        (images are padded at the bottom and right to the stride, never resized)."""
        from ultralytics.utils.nms import non_max_suppression

        images = _check_images(images)
        if max_detections is not None and max_detections < 0:
            raise ValueError(f"max_detections must be >= 0 or None, got {max_detections}")
        network, head = self.network, self.head
        device = next(network.parameters()).device
        cached = {k: getattr(head, k, None) for k in ("anchors", "strides", "shape")}
        # Anchors cached by a validation under inference mode are inference tensors, which
        # autograd refuses: make the head build its own for this call.
        head.shape = None
        try:
            with preserve_model_state(network), cam_mode():
                batch = self._batch(images, device)
                # Autograd records only what runs after the explained layer (grad mode turns
                # on at its first call): the head alone at the head's input.
                if self.module is None:
                    recorder = _HeadInputs(head)
                    capture = ActivationCapture({})
                else:
                    recorder = contextlib.nullcontext()
                    capture = ActivationCapture({self.layer: self.module}, grad_from_layer=True)
                with recorder as inputs, capture, torch.no_grad():
                    decoded, preds = network(batch)
                levels = inputs.levels if self.module is None else preds["feats"]
                kept, rows = non_max_suppression(
                    decoded.detach(),
                    self.conf,
                    self.iou,
                    max_det=300,
                    nc=head.nc,
                    return_idxs=True,
                )
                outputs = [
                    {"boxes": k[:, :4], "labels": k[:, 5].long(), "scores": k[:, 4]} for k in kept
                ]
                if choose is None:
                    ranks = [list(range(len(o["scores"])))[:max_detections] for o in outputs]
                else:
                    ranks = [[int(r) for r in rs] for rs in choose(outputs)]
                return self._explain(images, batch, preds, outputs, rows, ranks, levels, capture)
        finally:
            for key, value in cached.items():
                setattr(head, key, value)

    def _explain(self, images, batch, preds, outputs, rows, ranks, levels, capture):
        sizes = [int(x.shape[-2] * x.shape[-1]) for x in levels]
        starts = torch.tensor([0, *sizes]).cumsum(0).tolist()
        results, flat = [], []
        for b, (out, picks) in enumerate(zip(outputs, ranks)):
            per = []
            for rank in picks:
                anchor = int(rows[b].reshape(-1)[rank])
                class_id = int(out["labels"][rank])
                level = max(i for i in range(len(sizes)) if starts[i] <= anchor)
                logit = preds["scores"][b, class_id, anchor]
                det = Detection(
                    image_index=b,
                    rank=rank,
                    box=out["boxes"][rank].detach().float().cpu().clone(),
                    class_id=class_id,
                    score=float(out["scores"][rank]),
                    target_score=float(logit.detach()),
                    level=level,
                    anchor_index=anchor - starts[level],
                    layer=self.layer,
                )
                per.append(det)
                flat.append((det, logit))
            results.append(per)
        if self.module is not None:
            # Checked with or without detections, so the callback's trial pass refuses a
            # layer before training even when a random-init model detects nothing yet.
            calls = capture.activations[self.layer]
            if len(calls) != 1 or calls[0].dim() != 4:
                raise ValueError(
                    f"layer {self.layer!r} must run once per forward and give (B, C, h, w); "
                    + _HINT
                )
            require_dependence(self.layer, preds["scores"], calls[0], _HINT)
        if not flat:
            return results
        if self.module is None:
            groups: dict[int, list[int]] = {}
            for i, (det, _) in enumerate(flat):
                groups.setdefault(det.level, []).append(i)
            work = [(levels[level], members, level) for level, members in groups.items()]
        else:
            work = [(calls[0], list(range(len(flat))), None)]
        padded = tuple(int(s) for s in batch.shape[-2:])
        for activation, members, level in work:
            owners = [flat[i][0].image_index for i in members]
            targets = [flat[i][1] for i in members]
            radius = None if level is None else receptive_radius(self.head.cv3[level])
            if radius is None or not self.windowed:
                grads = own_gradients(targets, owners, activation, self.layer)
            else:
                width = int(activation.shape[-1])
                cells = [divmod(flat[i][0].anchor_index, width) for i in members]
                grads = windowed_gradients(targets, owners, cells, activation, radius)
            for j, i in enumerate(members):
                det = flat[i][0]
                a, g = activation[owners[j]][None].detach(), grads[j][None]
                raw = torch.cat([compute_cam(m, a, g) for m in self.methods])
                size = tuple(int(s) for s in images[det.image_index].shape[-2:])
                full, found = place_maps(
                    raw, "image", out_size=size, padded_size=padded, image_size=size
                )
                det.maps_by_layer[self.layer] = dict(zip(self.methods, full.float().cpu()))
                det.layer_maps_by_layer[self.layer] = dict(zip(self.methods, raw.float().cpu()))
                det.evidence_by_layer[self.layer] = dict(
                    zip(self.methods, (bool(f) for f in found))
                )
                det.layer_kinds[self.layer] = "head" if self.module is None else "image"
        return results
