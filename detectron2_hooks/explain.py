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

How the work is split (one job per module; ``DetectionCAM`` only runs them in order):

- ``detector.py``: which family the detector is (from the adapters' ``cam_provenance``), its
  feature reader (pooler or dense head), default layer, and the inference forward;
- ``selection.py``: which detections are explained, their provenance, and the scalar
  differentiated, gathered in one ``SelectedDetections`` record;
- ``pullback.py``: where each layer sits (``LayerSite``) and each detection's activation and
  gradient there (``LayerEvidence``);
- ``assembly.py``: CAM methods applied, maps pasted / upsampled and normalised, ``Detection``
  records built.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_gradcam.core.capture import ActivationCapture
from lightning_gradcam.core.layers import resolve_layer, unwrap_model
from lightning_gradcam.core.layouts import Reshape, check_reshape
from lightning_gradcam.core.methods import check_methods
from lightning_gradcam.core.state import cam_mode, preserve_model_state

from .assembly import Detection, assemble_detections, paste_in_boxes
from .detector import describe_detector
from .pullback import InputRecorder, gather_evidence, locate_layers
from .selection import select_detections

__all__ = ["DetectionCAM", "Detection", "paste_in_boxes"]


class DetectionCAM:
    """Per-detection CAM maps for detectron2 detectors built with the CAM adapters.

    ``cam = DetectionCAM(model, layer="roi_heads.res5", methods=("gradcam", "gradcam++"))``;
    ``out = cam.explain(inputs, max_detections=10)`` gives one list of :class:`Detection` per
    image, highest score first, with ``det.maps[method]`` an ``(H, W)`` map in [0, 1] over the
    input's ``"image"`` tensor.

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
        self.detector = describe_detector(self.model)
        if layer is None:
            layer = self.detector.default_layer
        self.layers: tuple[str, ...] = (layer,) if isinstance(layer, str) else tuple(layer)
        if not self.layers:
            raise ValueError("layer is an empty sequence; name at least one layer")
        self.modules = {name: resolve_layer(self.model, name) for name in self.layers}
        self.methods = check_methods(
            tuple(methods) if not isinstance(methods, str) else methods, detectors=True
        )

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
        with (
            preserve_model_state(self.model),
            cam_mode(),
            ActivationCapture(self.modules) as capture,
            InputRecorder(self.detector.feature_reader, calls=self.detector.reader_calls) as reader,
        ):
            # Inputs made under inference_mode cannot be saved for backward: copy them here.
            inputs = [{**item, "image": item["image"].clone()} for item in inputs]
            forward = self.detector.forward(inputs)
            selection = select_detections(forward, self.detector.provenance, max_detections)
            if selection is None:
                return [[] for _ in inputs]
            sites = locate_layers(self.detector, self.modules, capture, reader)
            evidence = gather_evidence(self.detector, sites, selection, capture, reader)
            return assemble_detections(
                selection, evidence, self.layers, self.methods, self.model, self.reshape
            )
