"""Which detections are explained, where each came from, and the scalar differentiated.

:func:`select_detections` turns one inference forward into a :class:`SelectedDetections`,
the record the gradient pull-back (``pullback.py``) and the map assembly (``assembly.py``)
work from: detection ``d`` of the explanation is ``picks[d]``, its target scalar
``targets[d]`` and its origin ``origin`` at index ``d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from detectron2.structures import Instances

from lightning_gradcam.core.detect import chosen_rows
from lightning_gradcam.core.detect.options import Choose

from .detector import ANCHOR, PROPOSAL, ForwardOutput
from .scores import SCORES, check_score

__all__ = [
    "SCORES",
    "check_score",
    "AnchorOrigin",
    "ProposalOrigin",
    "SelectedDetections",
    "chosen_picks",
    "pick_top_detections",
    "select_detections",
    "target_scores",
]


def _stack_field(instances: list[Instances], picks: Sequence[tuple[int, int]], name: str):
    return torch.stack([instances[i].get(name)[r] for i, r in picks])


@dataclass(frozen=True)
class ProposalOrigin:
    """Two-stage provenance, per selected detection (``CAMRes5ROIHeads``,
    ``CAMStandardROIHeads``).

    Attributes:
        proposal_index: ``(D,)`` the proposal's index among its image's proposals.
        roi_row: ``(D,)`` its row among all ROIs of the batch (the pooled tensor's rows).
        proposal_box: ``(D, 4)`` the proposal box that was pooled.
    """

    proposal_index: torch.Tensor
    roi_row: torch.Tensor
    proposal_box: torch.Tensor

    @classmethod
    def read(cls, instances: list[Instances], picks: Sequence[tuple[int, int]]) -> ProposalOrigin:
        return cls(
            proposal_index=_stack_field(instances, picks, "cam_proposal_index"),
            roi_row=_stack_field(instances, picks, "cam_roi_row"),
            proposal_box=_stack_field(instances, picks, "cam_proposal_box"),
        )

    def detection_fields(self, index: int) -> dict[str, Any]:
        """The ``Detection`` fields of selected detection ``index``."""
        return {
            "proposal_index": int(self.proposal_index[index]),
            "roi_row": int(self.roi_row[index]),
            "proposal_box": self.proposal_box[index].detach().float().clone(),
        }


@dataclass(frozen=True)
class AnchorOrigin:
    """One-stage provenance, per selected detection (``CAMRetinaNet``).

    Attributes:
        level: ``(D,)`` feature level (index into ``head_in_features``).
        anchor_index: ``(D,)`` anchor within the level, ``(h * W + w) * A + a``.
    """

    level: torch.Tensor
    anchor_index: torch.Tensor

    @classmethod
    def read(cls, instances: list[Instances], picks: Sequence[tuple[int, int]]) -> AnchorOrigin:
        return cls(
            level=_stack_field(instances, picks, "cam_level"),
            anchor_index=_stack_field(instances, picks, "cam_anchor_index"),
        )

    def detection_fields(self, index: int) -> dict[str, Any]:
        return {"level": int(self.level[index]), "anchor_index": int(self.anchor_index[index])}


#: ``cam_provenance`` of an adapter -> the origin record read from its ``Instances``.
ORIGINS: dict[str, type[ProposalOrigin] | type[AnchorOrigin]] = {
    PROPOSAL: ProposalOrigin,
    ANCHOR: AnchorOrigin,
}


@dataclass(frozen=True)
class SelectedDetections:
    """The detections to explain, in explanation order (image by image, highest score first),
    and everything the later stages need about them.

    Attributes:
        picks: ``(image index, row in that image's Instances)`` per detection.
        image_of: ``(D,)`` long, the image index of every detection.
        targets: ``(D,)`` the scalars to differentiate, on the autograd graph (the class
            logit or the reported probability, see :func:`target_scores`).
        origin: where each detection came from (proposal or level and anchor).
        forward: the forward the detections were read from (instances post-processed as
            detectron2 does, image and output sizes).
    """

    picks: list[tuple[int, int]]
    image_of: torch.Tensor
    targets: torch.Tensor
    origin: ProposalOrigin | AnchorOrigin
    forward: ForwardOutput

    def __len__(self) -> int:
        return len(self.picks)


def pick_top_detections(
    instances: list[Instances], max_detections: int | None
) -> list[tuple[int, int]]:
    """``(image index, row)`` of the top ``max_detections`` of every image (all if None),
    by reported score, highest first; ties keep detectron2's order."""
    picks = []
    for image_index, inst in enumerate(instances):
        order = torch.argsort(inst.scores.detach(), descending=True, stable=True)
        if max_detections is not None:
            order = order[:max_detections]
        picks.extend((image_index, int(row)) for row in order)
    return picks


def target_scores(
    instances: list[Instances], picks: Sequence[tuple[int, int]], score: str = "logit"
) -> torch.Tensor:
    """The scalars differentiated, one per pick; the one place where they are chosen.

    ``score="logit"``: the detection's class logit ``z_k`` (the adapters' ``cam_logit``): at
    its own proposal row, before the softmax (Faster R-CNN; Cascade R-CNN: the last stage's),
    or at its own level, anchor and class, before the sigmoid (RetinaNet, FCOS). Grad-CAM
    (Selvaraju et al., ICCV 2017) differentiates ``y^c``, the class score before the softmax:
    a probability ``p = softmax(z)_k`` or ``sigmoid(z_k)`` saturates, and its gradient
    ``dp/dz = p (1 - p)`` (sigmoid) vanishes as ``p -> 1``, leaving an all-zero map, while at
    low ``p`` the softmax's ``-p_k p_j`` terms can make it negative everywhere.

    ``score="probability"``: the score detectron2 reports (``Instances.scores``).
    """
    field = "cam_logit" if check_score(score) == "logit" else "scores"
    missing = [i for i, _ in picks if not instances[i].has(field)]
    if missing:
        raise RuntimeError(
            f"the detector's Instances have no {field!r} field; build it with the CAM adapters "
            "(to_cam_config) or use score='probability'"
        )
    targets = torch.stack([instances[i].get(field)[r] for i, r in picks])
    if not targets.requires_grad:
        raise RuntimeError("detection scores carry no gradient; was the forward run detached?")
    return targets


def chosen_picks(
    instances: list[Instances], choose: Choose | None, max_detections: int | None
) -> list[tuple[int, int]]:
    """``(image index, row)`` of the detections to explain: the top ``max_detections`` by
    score, or those ``choose`` returns (rows per image, in its order) given one dict of
    ``boxes``/``labels``/``scores`` per image, in the pixels the detections are reported in."""
    if choose is None:
        return pick_top_detections(instances, max_detections)
    outputs = [
        {
            "boxes": inst.pred_boxes.tensor.detach(),
            "labels": inst.pred_classes,
            "scores": inst.scores.detach(),
        }
        for inst in instances
    ]
    rows = chosen_rows(choose, outputs, [len(inst) for inst in instances], None)
    return [(image, row) for image, image_rows in enumerate(rows) for row in image_rows]


def select_detections(
    forward: ForwardOutput,
    provenance: str,
    max_detections: int | None,
    score: str = "logit",
    choose: Choose | None = None,
) -> SelectedDetections | None:
    """The detections to explain (:func:`chosen_picks`), or None when no image has any;
    ``score``: see :func:`target_scores`."""
    instances = forward.instances
    picks = chosen_picks(instances, choose, max_detections)
    if not picks:
        return None
    device = instances[0].scores.device
    return SelectedDetections(
        picks=picks,
        image_of=torch.tensor([i for i, _ in picks], device=device),
        targets=target_scores(instances, picks, score),
        origin=ORIGINS[provenance].read(instances, picks),
        forward=forward,
    )
