"""The detections detectron2 reports: the inference forward's ``Instances`` post-processed
exactly as ``GeneralizedRCNN`` / ``RetinaNet`` (and so ``DefaultPredictor``) do.

``detector_postprocess(results, height, width)``, with ``height``/``width`` from the input
dict when given (else the preprocessed image's size): boxes scaled by
``(width / w, height / h)`` and clipped to the output, boxes left empty by that dropped
(``Boxes.nonempty``), masks pasted in the output's pixels. detectron2's own function runs on a
copy, so the boxes, classes, scores and the order are detectron2's; the adapters' ``cam_*``
fields are plain tensors and are only indexed along (``cam_proposal_box`` keeps the
preprocessed image's pixels: it is what the pooler read).
"""

from __future__ import annotations

from dataclasses import replace

from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from .detector import ForwardOutput

__all__ = ["postprocess_like_detectron2", "output_size"]


def output_size(item: dict, image_size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the output for one input dict, as ``GeneralizedRCNN._postprocess``
    reads them: the dict's ``height``/``width`` when present, else the image's own size."""
    return int(item.get("height", image_size[0])), int(item.get("width", image_size[1]))


def _detached_copy(inst: Instances) -> Instances:
    """A copy whose boxes (scaled in place by ``detector_postprocess``) and masks / keypoints
    are detached; ``scores`` and ``cam_*logit*`` stay on the graph."""
    copy = Instances(inst.image_size, **inst.get_fields())
    copy.pred_boxes = Boxes(inst.pred_boxes.tensor.detach().clone())
    for name in ("pred_masks", "pred_keypoints", "pred_keypoint_heatmaps"):
        if copy.has(name):
            copy.set(name, copy.get(name).detach())
    return copy


def postprocess_like_detectron2(forward: ForwardOutput, inputs: list[dict]) -> ForwardOutput:
    """``forward`` with every image's detections as detectron2 reports them for ``inputs``
    (module docstring), and ``output_sizes`` set."""
    instances, sizes = [], []
    for inst, item, image_size in zip(forward.instances, inputs, forward.image_sizes):
        height, width = output_size(item, image_size)
        instances.append(detector_postprocess(_detached_copy(inst), height, width))
        sizes.append((height, width))
    return replace(forward, instances=instances, output_sizes=sizes)
