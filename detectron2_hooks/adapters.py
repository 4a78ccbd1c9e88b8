"""Registered detectron2 subclasses that remember where every final detection came from.

The stock heads throw that away: ``FastRCNNOutputLayers.inference`` returns the kept rows
(``filter_inds[:, 0]``) and both ROI heads discard them; RetinaNet never returns its anchor
indices. These subclasses add the provenance as extra ``Instances`` fields, with no edit to
detectron2 and no change to the predictions, parameters or ``state_dict`` keys:

=====================  ===================================================================
``CAMRes5ROIHeads``    Faster R-CNN C4 (``cfg.MODEL.ROI_HEADS.NAME``)
``CAMStandardROIHeads`` Faster R-CNN FPN (``cfg.MODEL.ROI_HEADS.NAME``)
``CAMRetinaNet``       RetinaNet (``cfg.MODEL.META_ARCHITECTURE``)
=====================  ===================================================================

Fields, on the ``Instances`` of each image (inference only):

- ROI heads: ``cam_proposal_index`` (long, the proposal's index among that image's
  proposals), ``cam_roi_row`` (long, its row among all ROIs of the batch, i.e. in the pooled
  tensor), ``cam_proposal_box`` (float ``(N, 4)``, the proposal box that was pooled, a plain
  tensor so that ``detector_postprocess`` does not rescale it).
- RetinaNet: ``cam_level`` (index into ``head_in_features``), ``cam_anchor_index`` (within
  the level, ``(h * W + w) * A + a``), ``cam_class_index`` (``k``; the logit channel of the
  head output is ``a * K + k``).

Each class declares which of those two sets it adds with ``cam_provenance = "proposal"`` or
``"anchor"`` (``detector.py`` reads it); a new adapter declares one of them, or a new kind.

``scores`` stay attached to the autograd graph when the forward runs with grad enabled, for
every image of a batch (RetinaNet's stock in-place ``sigmoid_`` on views shared by the images
of a batch breaks that; the subclass uses an out-of-place sigmoid, which gives equal values).
"""

from __future__ import annotations

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling import META_ARCH_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, ImageList, Instances

__all__ = [
    "CAMRes5ROIHeads",
    "CAMStandardROIHeads",
    "CAMRetinaNet",
    "CAM_ROI_HEADS",
    "CAM_META_ARCHS",
    "is_cam_model",
]

#: Stock registry name -> CAM registry name.
CAM_ROI_HEADS = {"Res5ROIHeads": "CAMRes5ROIHeads", "StandardROIHeads": "CAMStandardROIHeads"}
CAM_META_ARCHS = {"RetinaNet": "CAMRetinaNet"}


def _register(registry, cls: type) -> type:
    """Register ``cls`` once; a second import (``importlib.reload``, or the module loaded
    under two paths) replaces its own earlier entry instead of failing."""
    existing = registry._obj_map.get(cls.__name__)
    if existing is None:
        registry.register(cls)
    elif existing is not cls:
        if getattr(existing, "__qualname__", None) != cls.__qualname__ or not getattr(
            existing, "cam_provenance", False
        ):
            raise RuntimeError(
                f"{registry._name} registry already holds an unrelated {cls.__name__!r} "
                f"({existing!r}); rename one of them."
            )
        registry._obj_map[cls.__name__] = cls
    return cls


class _ROIProvenanceMixin:
    """Box inference that keeps, for every detection, the proposal it came from."""

    #: How detections remember their origin; ``detector.py`` reads it ("proposal": the
    #: ``cam_proposal_*`` / ``cam_roi_row`` fields below).
    cam_provenance = "proposal"

    def _cam_box_inference(
        self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]
    ) -> list[Instances]:
        """``box_predictor.inference`` with provenance fields added.

        Calls the predictor's own ``predict_boxes`` / ``predict_probs`` and the stock
        ``fast_rcnn_inference``, so boxes, scores and classes are the stock ones. The kept rows
        it returns index the rows left after its non-finite filter; they are mapped back
        through that filter here.
        """
        predictor = self.box_predictor
        boxes = predictor.predict_boxes(predictions, proposals)
        scores = predictor.predict_probs(predictions, proposals)
        image_shapes = [x.image_size for x in proposals]
        instances, kept = fast_rcnn_inference(
            boxes,
            scores,
            image_shapes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        offset = 0
        for inst, kept_rows, boxes_i, scores_i, props in zip(
            instances, kept, boxes, scores, proposals
        ):
            valid = torch.isfinite(boxes_i).all(dim=1) & torch.isfinite(scores_i).all(dim=1)
            proposal_index = nonzero_tuple(valid)[0][kept_rows]
            inst.cam_proposal_index = proposal_index
            inst.cam_roi_row = proposal_index + offset
            inst.cam_proposal_box = props.proposal_boxes.tensor[proposal_index].detach().clone()
            offset += len(props)
        return instances


class CAMRes5ROIHeads(_ROIProvenanceMixin, Res5ROIHeads):
    """``Res5ROIHeads`` (Faster R-CNN C4) whose detections keep their proposal.

    Per-ROI layers: ``roi_heads.pooler`` (14x14) and ``roi_heads.res5`` (7x7), one row per
    proposal, in the order of the proposals, images concatenated.
    """

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ):
        if self.training:
            return super().forward(images, features, proposals, targets)
        proposal_boxes = [x.proposal_boxes for x in proposals]
        box_features = self._shared_roi_transform(
            [features[f] for f in self.in_features], proposal_boxes
        )
        predictions = self.box_predictor(box_features.mean(dim=[2, 3]))
        pred_instances = self._cam_box_inference(predictions, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}


class CAMStandardROIHeads(_ROIProvenanceMixin, StandardROIHeads):
    """``StandardROIHeads`` (Faster R-CNN FPN) whose detections keep their proposal.

    Per-ROI layer: ``roi_heads.box_pooler`` (7x7), one row per proposal.
    """

    def _forward_box(self, features: dict[str, torch.Tensor], proposals: list[Instances]):
        if self.training:
            return super()._forward_box(features, proposals)
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        del box_features
        return self._cam_box_inference(predictions, proposals)


class CAMRetinaNet(RetinaNet):
    """``RetinaNet`` whose detections keep their feature level, anchor and class.

    Head layers ``head.cls_subnet.0`` to ``.7`` run once per level, in the order of
    ``head_in_features``; ``cam_level`` indexes those calls.
    """

    #: How detections remember their origin ("anchor": ``cam_level``, ``cam_anchor_index``).
    cam_provenance = "anchor"

    def forward_inference(
        self, images: ImageList, features: list[torch.Tensor], predictions: list[list[torch.Tensor]]
    ):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        results: list[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            # Out-of-place: the stock in-place sigmoid_ on views of one tensor shared by all
            # images invalidates the graph of every image but the last.
            scores_per_image = [x[img_idx].sigmoid() for x in pred_logits]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            results.append(
                self.inference_single_image(anchors, scores_per_image, deltas_per_image, image_size)
            )
        return results

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: torch.Tensor,
        pred_deltas: torch.Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: tuple[int, int],
    ) -> Instances:
        pred = super()._decode_per_level_predictions(
            anchors, pred_scores, pred_deltas, score_thresh, topk_candidates, image_size
        )
        # The stock decoder does not return its (anchor, class) indices; the same threshold
        # and top-k on the same tensor select the same candidates in the same order.
        with torch.no_grad():
            candidates = torch.nonzero(pred_scores > score_thresh)
            kept = pred_scores[candidates[:, 0], candidates[:, 1]].topk(len(pred))[1]
            anchor_index, class_index = candidates[kept].unbind(dim=1)
        if not torch.equal(class_index, pred.pred_classes):
            raise RuntimeError("CAMRetinaNet: candidate selection differs from the stock decoder")
        pred.cam_anchor_index = anchor_index
        pred.cam_class_index = class_index
        return pred

    def _decode_multi_level_predictions(
        self,
        anchors: list[Boxes],
        pred_scores: list[torch.Tensor],
        pred_deltas: list[torch.Tensor],
        score_thresh: float,
        topk_candidates: int,
        image_size: tuple[int, int],
    ) -> Instances:
        per_level = [
            self._decode_per_level_predictions(
                anchors_i, scores_i, deltas_i, score_thresh, topk_candidates, image_size
            )
            for scores_i, deltas_i, anchors_i in zip(pred_scores, pred_deltas, anchors)
        ]
        for level, pred in enumerate(per_level):
            pred.cam_level = torch.full(
                (len(pred),), level, dtype=torch.long, device=pred.scores.device
            )
        return Instances.cat(per_level)


def is_cam_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` (unwrapped) records detection provenance (one of the classes here)."""
    if getattr(model, "cam_provenance", False):
        return True
    roi_heads = getattr(model, "roi_heads", None)
    return bool(getattr(roi_heads, "cam_provenance", False))


_register(ROI_HEADS_REGISTRY, CAMRes5ROIHeads)
_register(ROI_HEADS_REGISTRY, CAMStandardROIHeads)
_register(META_ARCH_REGISTRY, CAMRetinaNet)
