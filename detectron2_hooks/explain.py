"""Detectron2CAM: one class-activation map per detection, per layer and per method.

The detections are those detectron2 reports (``model(inputs)``, ``DefaultPredictor``):
post-processed as ``GeneralizedRCNN``/``RetinaNet`` do (boxes rescaled to the input dict's
``height``/``width`` when given, empty boxes dropped), with every map in those pixels.

For every top detection of every image, the scalar differentiated (``score=``) is by default
its class logit ``z_k``: at its own proposal row before the softmax (Faster R-CNN), at its own
level, anchor and class before the sigmoid (RetinaNet). Grad-CAM differentiates the class
score before the softmax (Selvaraju et al., ICCV 2017); a probability saturates (its
gradient vanishes as it nears 1, an all-zero map) and, at low confidence, the softmax's
cross terms can make Grad-CAM negative everywhere. ``score="probability"`` differentiates
the reported score. ``Detection.target_score`` is exactly the scalar differentiated,
``Detection.score`` always detectron2's reported score. A map with no positive evidence (zero
everywhere after the ReLU) is marked ``Detection.evidence[method] = False``.

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

How the work is split (one job per module; ``Detectron2CAM`` only runs them in order; the
gradients and maps themselves are the detection kernel's, ``lightning_gradcam.core.detect``):

- ``detector.py``: which family the detector is (from the adapters' ``cam_provenance``), its
  feature reader (pooler or dense head), default layer, and the inference forward;
- ``selection.py``: which detections are explained (the top ``max_detections``, or
  ``choose=``), their provenance, and the scalar differentiated, in one
  ``SelectedDetections`` record;
- ``pullback.py``: where each layer sits (``LayerSite``) and each detection's activation and
  gradient there (``LayerEvidence``);
- ``assembly.py``: CAM methods applied, maps pasted / upsampled and normalised, ``Detection``
  records built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_gradcam.core.capture import ActivationCapture
from lightning_gradcam.core.detect import InputRecorder, check_choose, check_options
from lightning_gradcam.core.detect.options import Choose
from lightning_gradcam.core.layers import resolve_layer, unwrap_model
from lightning_gradcam.core.layouts import Reshape
from lightning_gradcam.core.state import cam_mode, preserve_model_state

from .assembly import Detection, assemble_detections, paste_in_boxes
from .detector import describe_detector
from .postprocess import postprocess_like_detectron2
from .pullback import gather_evidence, locate_layers
from .selection import select_detections

__all__ = [
    "Detectron2CAM",
    "DetectionCAM",
    "Detection",
    "paste_in_boxes",
    "DETECTOR_LAYER_HINT",
]

#: How a detector's user chooses a layer, for the "no such layer" message.
DETECTOR_LAYER_HINT = (
    "or layer=None for the detector's default (roi_heads.res5 for C4, roi_heads.box_pooler "
    "for FPN, head.cls_subnet.7 for RetinaNet)"
)


class Detectron2CAM:
    """Per-detection CAM maps for detectron2 detectors built with the CAM adapters.

    ``cam = Detectron2CAM(model, layer="roi_heads.res5", methods=("gradcam", "gradcam++"))``;
    ``out = cam.explain(inputs, max_detections=10)`` gives one list of :class:`Detection` per
    image, highest score first, with ``det.maps[method]`` an ``(H, W)`` map in [0, 1] in the
    output's pixels (the input dict's ``height``/``width``, else its ``"image"`` tensor's).

    Example::

        cam = Detectron2CAM(model, layer="roi_heads.res5", methods=("gradcam", "hirescam"))
        for det in cam.explain([{"image": image_chw}], max_detections=5)[0]:
            print(det.class_id, det.score, det.maps["gradcam"].shape)

    Args:
        model: a ``GeneralizedRCNN`` or ``PanopticFPN`` with ``CAMRes5ROIHeads`` /
            ``CAMStandardROIHeads`` / ``CAMCascadeROIHeads`` (ViTDet included), or a
            ``CAMRetinaNet`` / ``CAMFCOS`` (``to_cam_config`` switches a stock YAML or
            LazyConfig; checkpoints load unchanged). DDP / DataParallel / compile wrappers
            are unwrapped. A cascade's per-ROI layer is explained at its last stage's pooler
            call, in the box that stage pooled (see ``docs/detectors.md``).
        layer: a dotted module name or a sequence of them (``None``: ``roi_heads.res5`` C4,
            ``roi_heads.box_pooler`` FPN and cascade, ``head.cls_subnet.7`` RetinaNet,
            ``head.cls_subnet.11`` FCOS). With several
            layers, ``det.maps_by_layer[layer][method]``; ``det.maps`` is the first layer's.
        methods: any of ``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``hirescam``
            or a name added with ``lightning_gradcam.register_method`` (guided methods need a
            backward pass to the input, which DetectionCAM does not run).
            At image-level and RetinaNet head layers use ``hirescam`` for a map specific to the
            detection (see the module docstring).
        score: the scalar differentiated per detection: ``"logit"`` (default), its class
            logit before the softmax / sigmoid, which does not saturate; ``"probability"``,
            the score detectron2 reports.
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
        score: str = "logit",
        reshape: Reshape | None = None,
    ):
        self.model = unwrap_model(model)
        options = check_options(methods, score, reshape)
        self.methods, self.score, self.reshape = options.methods, options.score, options.reshape
        self.detector = describe_detector(self.model)
        if layer is None:
            layer = self.detector.default_layer
        self.layers: tuple[str, ...] = (layer,) if isinstance(layer, str) else tuple(layer)
        if not self.layers:
            raise ValueError("layer is an empty sequence; name at least one layer")
        self.modules = {
            name: resolve_layer(self.model, name, hint=DETECTOR_LAYER_HINT) for name in self.layers
        }

    def explain(
        self, inputs: list[dict], max_detections: int | None = 10, *, choose: Choose | None = None
    ) -> list[list[Detection]]:
        """Explain the top ``max_detections`` detections (all if None) of every image.

        Args:
            inputs: detectron2 inputs, a list of dicts with an ``"image"`` ``(C, H, W)`` tensor
                in the model's input format (as a ``DatasetMapper`` makes them), and
                optionally ``"height"``/``"width"``: the size to report detections and maps
                in, as detectron2 does.
            choose: instead of the top ``max_detections``, the detections to explain: given
                one dict of ``boxes``/``labels``/``scores`` per image (detectron2's
                post-processed output, in the reported pixels), it returns the rows to
                explain per image; each list of detections is then in that order.

        Returns:
            One list per image of :class:`Detection`, highest score first; an image with no
            detection gets ``[]``.

        Raises:
            ValueError: a layer that did not run in this forward, whose output is not a
                ``(N, C, h, w)`` map, or on which the detection scores do not depend.
        """
        check_choose(choose)
        if max_detections is not None and max_detections < 0:
            raise ValueError(f"max_detections must be >= 0 or None, got {max_detections}")
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError("inputs must be a non-empty list of detectron2 input dicts")
        for item in inputs:
            if not isinstance(item, dict) or not isinstance(item.get("image"), torch.Tensor):
                got = type(item.get("image") if isinstance(item, dict) else item).__name__
                raise ValueError(
                    "each input must be a dict with an 'image' (C, H, W) tensor in the model's "
                    f"input format, as a DatasetMapper makes it; got {got}. For an (H, W, 3) "
                    "uint8 image as cv2.imread gives it, use detectron2_hooks.CAMPredictor"
                )
        with (
            preserve_model_state(self.model),
            cam_mode(),
            ActivationCapture(self.modules) as capture,
            InputRecorder(self.detector.feature_reader, calls=self.detector.reader_calls) as reader,
        ):
            # Inputs made under inference_mode cannot be saved for backward: copy them here.
            inputs = [{**item, "image": item["image"].clone()} for item in inputs]
            forward = postprocess_like_detectron2(self.detector.forward(inputs), inputs)
            selection = select_detections(
                forward, self.detector.provenance, max_detections, self.score, choose
            )
            if selection is None:
                return [[] for _ in inputs]
            sites = locate_layers(self.detector, self.modules, capture, reader)
            evidence = gather_evidence(self.detector, sites, selection, capture, reader)
            return assemble_detections(
                selection, evidence, self.layers, self.methods, self.model, self.reshape
            )


#: The name inside the package (the hook, the predictor, the command line); the public
#: ``detectron2_hooks.DetectionCAM`` is a deprecated alias that warns once.
DetectionCAM = Detectron2CAM
