"""What Detectron2CAM needs to know about a CAM-adapted detector, in one place.

A detector built with the adapters (``adapters.py``) declares how its detections remember
where they came from, by its ``cam_provenance`` attribute:

``"proposal"``
    two-stage (Faster R-CNN C4 / FPN, Cascade R-CNN, PanopticFPN's detection branch, ViTDet):
    every detection keeps the proposal it was classified from; its features were pooled by
    the ROI pooler (a cascade pools once per stage, on the same rows).
``"anchor"``
    one-stage (RetinaNet, FCOS): every detection keeps its feature level and anchor (FCOS:
    location); its score was read from the dense head's output at that level.

:class:`DetectorParts` gathers, for either family, the modules the gradient pull-back needs
and the inference forward that keeps the scores on the autograd graph. A new family is one
more branch in :func:`describe_detector` and one more origin class in ``selection.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from detectron2.modeling.meta_arch.panoptic_fpn import PanopticFPN
from detectron2.structures import Instances
from torch import nn

from .adapters import CAMCascadeROIHeads, is_cam_model
from .config import model_default_layer

__all__ = ["DetectorParts", "ForwardOutput", "describe_detector", "PROPOSAL", "ANCHOR"]

PROPOSAL = "proposal"
ANCHOR = "anchor"


@dataclass(frozen=True)
class ForwardOutput:
    """One inference forward: predictions in the coordinates of the preprocessed images.

    Attributes:
        instances: one ``Instances`` per image, scores still on the autograd graph.
        image_sizes: ``(height, width)`` of every image before padding.
        padded_size: ``(height, width)`` of the padded batch tensor.
        output_sizes: ``(height, width)`` the detections are reported in, per image, once
            post-processed (``postprocess.postprocess_like_detectron2``); None before.
    """

    instances: list[Instances]
    image_sizes: list[tuple[int, int]]
    padded_size: tuple[int, int]
    output_sizes: list[tuple[int, int]] | None = None

    def scale(self, image_index: int) -> tuple[float, float]:
        """``(x, y)`` factors from the preprocessed image's pixels to the output's."""
        height, width = self.image_sizes[image_index]
        out_h, out_w = (self.output_sizes or self.image_sizes)[image_index]
        return out_w / width, out_h / height


@dataclass(frozen=True)
class DetectorParts:
    """A CAM-adapted detector, seen as Detectron2CAM sees it.

    Attributes:
        model: the unwrapped detector.
        provenance: ``"proposal"`` (two-stage) or ``"anchor"`` (one-stage).
        feature_reader: the module whose inputs are the per-level image features the
            detections are read from, and whose gradients the pull-back starts at: the ROI
            pooler (two-stage) or the dense head (one-stage).
        head: the modules inside it run once per ROI batch (two-stage: ``roi_heads``) or once
            per feature level (one-stage: ``head``); a layer outside it is image-level.
        default_layer: the layer explained when none is named.
        reader_calls: how many calls of ``feature_reader`` the scores depend on: ``S`` for a
            cascade of ``S`` stages (its ``box_pooler`` pools once per stage, the last call,
            ``S - 1``, being the adapters' ``cam_pooler_call``), else 1.
    """

    model: nn.Module
    provenance: str
    feature_reader: nn.Module
    head: nn.Module
    default_layer: str
    reader_calls: int = 1

    @property
    def is_two_stage(self) -> bool:
        return self.provenance == PROPOSAL

    def forward(self, inputs: list[dict]) -> ForwardOutput:
        """The inference forward up to the detections (no rescaling to ``height``/``width``)."""
        model = self.model
        images = model.preprocess_image(inputs)
        padded = tuple(images.tensor.shape[-2:])
        if self.is_two_stage:
            instances = model.inference(inputs, do_postprocess=False)
            if isinstance(model, PanopticFPN):
                instances = instances[0]  # (instances, sem_seg)
        else:
            features = model.backbone(images.tensor)
            features = [features[f] for f in model.head_in_features]
            instances = model.forward_inference(images, features, model.head(features))
        return ForwardOutput(list(instances), list(images.image_sizes), padded)


def describe_detector(model: nn.Module) -> DetectorParts:
    """The parts of an unwrapped CAM-adapted detector; a stock one is refused with the fix."""
    if not is_cam_model(model):
        heads = getattr(model, "roi_heads", None)
        what = type(heads).__name__ if heads is not None else type(model).__name__
        raise TypeError(
            f"Detectron2CAM needs a detector built with the CAM adapters, got {what}. Build "
            "it from detectron2_hooks.to_cam_config(cfg) (ROI_HEADS.NAME CAMRes5ROIHeads / "
            "CAMStandardROIHeads, or META_ARCHITECTURE CAMRetinaNet); stock checkpoints "
            "load unchanged."
        )
    if getattr(model, "cam_provenance", None) == ANCHOR:
        return DetectorParts(
            model=model,
            provenance=ANCHOR,
            feature_reader=model.head,
            head=model.head,
            default_layer=model_default_layer(model),
        )
    heads = model.roi_heads
    return DetectorParts(
        model=model,
        provenance=PROPOSAL,
        feature_reader=heads.pooler if hasattr(heads, "pooler") else heads.box_pooler,
        head=heads,
        default_layer=model_default_layer(model),
        reader_calls=heads.num_cascade_stages if isinstance(heads, CAMCascadeROIHeads) else 1,
    )
