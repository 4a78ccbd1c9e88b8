"""Registered detectron2 subclasses that remember where every final detection came from.

The stock heads throw that away: ``FastRCNNOutputLayers.inference`` returns the kept rows
(``filter_inds[:, 0]``) and both ROI heads discard them; RetinaNet never returns its anchor
indices. These subclasses add the provenance as extra ``Instances`` fields, with no edit to
detectron2 and no change to the predictions, parameters or ``state_dict`` keys:

========================  ================================================================
``CAMRes5ROIHeads``       Faster R-CNN / Mask R-CNN C4 (``cfg.MODEL.ROI_HEADS.NAME``)
``CAMStandardROIHeads``   Faster / Mask / keypoint R-CNN FPN, PanopticFPN's detection
                          branch, ViTDet (``cfg.MODEL.ROI_HEADS.NAME``, or the LazyConfig
                          ``model.roi_heads._target_``)
``CAMCascadeROIHeads``    Cascade R-CNN (``cfg.MODEL.ROI_HEADS.NAME``)
``CAMRetinaNet``          RetinaNet (``cfg.MODEL.META_ARCHITECTURE``, ``model._target_``)
``CAMFCOS``               FCOS (LazyConfig ``model._target_``; detectron2 has no YAML FCOS)
========================  ================================================================

Fields, on the ``Instances`` of each image (inference only):

- ROI heads: ``cam_proposal_index`` (long, the proposal's index among that image's
  proposals), ``cam_roi_row`` (long, its row among all ROIs of the batch, i.e. in the pooled
  tensor), ``cam_proposal_box`` (float ``(N, 4)``, the proposal box that was pooled, a plain
  tensor so that ``detector_postprocess`` does not rescale it), ``cam_logit`` (the class
  logit ``z_k`` of the box predictor at that row, before the softmax).
- Cascade R-CNN adds ``cam_pooler_call`` (long, which call of ``roi_heads.box_pooler`` pooled
  the detection: the last stage's, ``num_cascade_stages - 1``) and ``cam_stage_logits``
  (``(N, S)``, the class logit of every stage at the row); its ``cam_proposal_box`` is the box
  the last stage pooled (the previous stage's regressed box), and ``cam_logit`` the last
  stage's logit (see :class:`CAMCascadeROIHeads`).
- RetinaNet and FCOS: ``cam_level`` (index into ``head_in_features``), ``cam_anchor_index``
  (within the level, ``(h * W + w) * A + a``; FCOS has ``A = 1``: the location),
  ``cam_class_index`` (``k``; the logit channel of the head output is ``a * K + k``),
  ``cam_logit`` (that class logit, before the sigmoid). FCOS adds ``cam_centerness_logit``
  (its score is ``sqrt(sigmoid(cam_logit) * sigmoid(cam_centerness_logit))``).

Each class declares which of those two sets it adds with ``cam_provenance = "proposal"`` or
``"anchor"`` (``detector.py`` reads it); a new adapter declares one of them, or a new kind.

``scores`` and every ``cam_*logit*`` field stay attached to the autograd graph when the
forward runs with grad enabled, for every image of a batch (RetinaNet's and FCOS's stock
in-place ``sigmoid_`` on views shared by the images of a batch breaks that; the subclasses use
an out-of-place sigmoid, which gives equal values).
"""

from __future__ import annotations

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling import META_ARCH_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.meta_arch.panoptic_fpn import PanopticFPN
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.roi_heads import CascadeROIHeads, Res5ROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, ImageList, Instances

__all__ = [
    "CAMRes5ROIHeads",
    "CAMStandardROIHeads",
    "CAMCascadeROIHeads",
    "CAMRetinaNet",
    "CAMFCOS",
    "CAM_ROI_HEADS",
    "CAM_META_ARCHS",
    "ROI_META_ARCHS",
    "is_cam_model",
]

#: Stock registry name -> CAM registry name.
CAM_ROI_HEADS = {
    "Res5ROIHeads": "CAMRes5ROIHeads",
    "StandardROIHeads": "CAMStandardROIHeads",
    "CascadeROIHeads": "CAMCascadeROIHeads",
}
CAM_META_ARCHS = {"RetinaNet": "CAMRetinaNet", "FCOS": "CAMFCOS"}
#: Meta-architectures whose ROI heads are switched (their own class is kept).
ROI_META_ARCHS = ("GeneralizedRCNN", "PanopticFPN")


def _register(registry, cls: type) -> type:
    """Register ``cls`` once per process, and return the class the registry holds.

    A second import of this module (``importlib.reload``, or the file loaded under two
    module names) defines the classes again; fvcore's registries refuse a second entry under
    a name and have no public way to replace one, so the first registration stays and the
    module's names are bound to it (``CAMRes5ROIHeads = _register(...)`` below): every copy
    of the module then builds the very class the registry builds. A different class under
    one of these names (a user's own) is refused."""
    if cls.__name__ not in registry:
        registry.register(cls)
        return cls
    existing = registry.get(cls.__name__)
    if existing is not cls and (
        getattr(existing, "__qualname__", None) != cls.__qualname__
        or not getattr(existing, "cam_provenance", False)
    ):
        raise RuntimeError(
            f"a detectron2 registry already holds an unrelated {cls.__name__!r} "
            f"({existing!r}); rename one of them."
        )
    return existing


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
        ``fast_rcnn_inference``, so boxes, scores and classes are the stock ones.
        """
        predictor = self.box_predictor
        boxes = predictor.predict_boxes(predictions, proposals)
        scores = predictor.predict_probs(predictions, proposals)
        return self._cam_inference(predictor, boxes, scores, predictions[0], proposals)

    @staticmethod
    def _cam_inference(
        predictor,
        boxes: tuple[torch.Tensor, ...],
        scores: tuple[torch.Tensor, ...],
        class_logits: torch.Tensor,
        proposals: list[Instances],
    ) -> list[Instances]:
        """The stock ``fast_rcnn_inference`` on ``boxes``/``scores`` (per image), with the
        provenance fields. ``class_logits``: ``(R, K + 1)``, one row per ROI of the batch.

        The kept rows ``fast_rcnn_inference`` returns index the rows left after its non-finite
        filter; they are mapped back through that filter here.
        """
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
            inst.cam_logit = class_logits[inst.cam_roi_row, inst.pred_classes]
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
    """``StandardROIHeads`` (Faster R-CNN FPN, Mask / keypoint R-CNN, PanopticFPN's detection
    branch, ViTDet) whose detections keep their proposal.

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


class CAMCascadeROIHeads(_ROIProvenanceMixin, CascadeROIHeads):
    """``CascadeROIHeads`` (Cascade R-CNN) whose detections keep their proposal.

    At inference the cascade runs ``S`` stages (3 in the model zoo) on the same rows: stage
    ``s`` pools the boxes regressed by stage ``s - 1`` (stage 0 the RPN proposals), so
    ``roi_heads.box_pooler`` runs ``S`` times, one row per proposal each time, and a
    detection's row is the same in every stage. The reported box is the last stage's
    regression; the reported score is the mean of the stages' softmax probabilities,
    ``p = (1/S) sum_s softmax(z_s)_k``.

    Provenance: ``cam_roi_row`` / ``cam_proposal_index`` (the row, equal in every stage),
    ``cam_pooler_call = S - 1`` and ``cam_proposal_box`` (the box the last stage pooled): a
    per-ROI layer explains the detection at the last stage's pooled box.

    Which logit (``score="logit"``): ``cam_logit`` is the **last stage's** class logit
    ``z_{S-1,k}`` at the row. Reasons: (1) the last stage produced the reported box and pooled
    the box a per-ROI map is pasted into; its logit depends on that pooled feature only, so
    the per-ROI map explains exactly the box that is drawn; (2) it is the logit of one
    classifier, the one trained at the highest IoU threshold, whereas a mean of three
    classifiers' logits is no classifier's score and, at an image-level layer, mixes evidence
    gathered at three different boxes; (3) like every logit here it does not saturate. The
    stages' logits are in ``cam_stage_logits`` (``(N, S)``) for anyone who wants their mean.
    ``score="probability"`` differentiates ``scores``, the mean of the stages' probabilities,
    as reported.
    """

    def _forward_box(self, features, proposals, targets=None):
        if self.training:
            return super()._forward_box(features, proposals, targets)
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        stages = []  # (predictor, predictions, proposals) per stage
        prev_boxes = None
        for k in range(self.num_cascade_stages):
            if k > 0:
                # The stock step: the previous stage's boxes, detached and clipped; no
                # filtering at inference, so the rows stay aligned across stages.
                proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            prev_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            stages.append((self.box_predictor[k], predictions, proposals))
        probs_per_stage = [p.predict_probs(pred, props) for p, pred, props in stages]
        scores = tuple(
            sum(per_image) * (1.0 / self.num_cascade_stages) for per_image in zip(*probs_per_stage)
        )
        predictor, predictions, proposals = stages[-1]
        boxes = predictor.predict_boxes(predictions, proposals)
        instances = self._cam_inference(predictor, boxes, scores, predictions[0], proposals)
        stage_logits = torch.stack([pred[0] for _, pred, _ in stages], dim=1)  # (R, S, K+1)
        for inst in instances:
            rows, classes = inst.cam_roi_row, inst.pred_classes
            inst.cam_stage_logits = stage_logits[rows, :, classes]
            inst.cam_pooler_call = torch.full_like(rows, self.num_cascade_stages - 1)
        return instances


class _DenseProvenanceMixin:
    """Decoding of a dense detector (``DenseDetector``) that keeps every detection's level,
    anchor and class, and its class logit."""

    #: How detections remember their origin ("anchor": ``cam_level``, ``cam_anchor_index``).
    cam_provenance = "anchor"

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
            raise RuntimeError(
                f"{type(self).__name__}: candidate selection differs from the stock decoder"
            )
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

    @staticmethod
    def _cam_gather(per_level: list[torch.Tensor], result: Instances) -> torch.Tensor:
        """``per_level[level][anchor, class]`` for every detection of ``result``; each
        ``per_level`` tensor is one image's ``(H*W*A, K)``, and the gather stays on the graph."""
        sizes = torch.tensor([len(x) for x in per_level], device=result.cam_level.device)
        starts = torch.cumsum(sizes, 0) - sizes
        flat = torch.cat(per_level, dim=0)
        column = (
            result.cam_class_index
            if flat.shape[1] > 1
            else torch.zeros_like(result.cam_class_index)
        )
        return flat[starts[result.cam_level] + result.cam_anchor_index, column]


class CAMRetinaNet(_DenseProvenanceMixin, RetinaNet):
    """``RetinaNet`` whose detections keep their feature level, anchor, class and logit.

    Head layers ``head.cls_subnet.0`` to ``.7`` run once per level, in the order of
    ``head_in_features``; ``cam_level`` indexes those calls. ``cam_logit`` is the class logit
    ``z`` at that level, anchor and class; the reported score is ``sigmoid(z)``.
    """

    def forward_inference(
        self, images: ImageList, features: list[torch.Tensor], predictions: list[list[torch.Tensor]]
    ):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        results: list[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            logits = [x[img_idx] for x in pred_logits]
            # Out-of-place: the stock in-place sigmoid_ on views of one tensor shared by all
            # images invalidates the graph of every image but the last.
            scores_per_image = [x.sigmoid() for x in logits]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            result = self.inference_single_image(
                anchors, scores_per_image, deltas_per_image, image_size
            )
            result.cam_logit = self._cam_gather(logits, result)
            results.append(result)
        return results


class CAMFCOS(_DenseProvenanceMixin, FCOS):
    """``FCOS`` whose detections keep their feature level, location, class and logits.

    FCOS has one anchor point per location (``A = 1``): ``cam_anchor_index = h * W + w`` at
    level ``cam_level``. Its reported score is ``sqrt(sigmoid(z_k) * sigmoid(c))`` (class logit
    ``z_k``, centerness logit ``c``; eq. 4 of arXiv:2006.09214). ``cam_logit`` is the class
    logit ``z_k`` (the class evidence, as for RetinaNet; the centerness is class-agnostic box
    quality, from the box branch), ``cam_centerness_logit`` is ``c``. Head layers
    ``head.cls_subnet.N`` run once per level; detectron2 builds FCOS from LazyConfigs only
    (``common/models/fcos.py``).
    """

    def forward_inference(
        self, images: ImageList, features: list[torch.Tensor], predictions: list[list[torch.Tensor]]
    ):
        pred_logits, pred_anchor_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        results: list[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            logits = [x[img_idx] for x in pred_logits]
            centerness = [x[img_idx] for x in pred_centerness]
            # Out-of-place sigmoids (see CAMRetinaNet); same values as the stock sigmoid_.
            scores_per_image = [
                torch.sqrt(x.sigmoid() * y.sigmoid()) for x, y in zip(logits, centerness)
            ]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            result = self.inference_single_image(
                anchors, scores_per_image, deltas_per_image, image_size
            )
            result.cam_logit = self._cam_gather(logits, result)
            result.cam_centerness_logit = self._cam_gather(centerness, result)
            results.append(result)
        return results


def is_cam_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` (unwrapped) records detection provenance (one of the classes here)."""
    if getattr(model, "cam_provenance", False):
        return True
    roi_heads = getattr(model, "roi_heads", None)
    return bool(getattr(roi_heads, "cam_provenance", False))


#: Stock class -> CAM class, for LazyConfig targets (FCOS is in no registry).
CAM_ROI_HEADS_CLASSES = {
    Res5ROIHeads: CAMRes5ROIHeads,
    StandardROIHeads: CAMStandardROIHeads,
    CascadeROIHeads: CAMCascadeROIHeads,
}
CAM_META_ARCH_CLASSES = {RetinaNet: CAMRetinaNet, FCOS: CAMFCOS}
ROI_META_ARCH_CLASSES = (GeneralizedRCNN, PanopticFPN)

CAMRes5ROIHeads = _register(ROI_HEADS_REGISTRY, CAMRes5ROIHeads)
CAMStandardROIHeads = _register(ROI_HEADS_REGISTRY, CAMStandardROIHeads)
CAMCascadeROIHeads = _register(ROI_HEADS_REGISTRY, CAMCascadeROIHeads)
CAMRetinaNet = _register(META_ARCH_REGISTRY, CAMRetinaNet)
CAMFCOS = _register(META_ARCH_REGISTRY, CAMFCOS)
