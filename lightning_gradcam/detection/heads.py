"""Which proposal row or anchor each of a torchvision detector's final detections came from.

torchvision's post-processing (``RoIHeads.postprocess_detections``, and the
``postprocess_detections`` of ``RetinaNet``, ``FCOS`` and ``SSD``) returns boxes, scores and
labels only: the proposal or anchor behind each row is thrown away. For the length of one
call, :func:`recording_postprocess` binds a wrapper of that method on the instance (the class
and its source are untouched, and the attribute is deleted again on every path) that keeps
the method's inputs and outputs. :func:`recover_origins` then finds, for every output row,
the candidate (proposal and class, or level, anchor and class) whose score, recomputed with
the very op the method used on the very same tensor, equals it; ties (duplicated anchors)
are broken by the decoded box. The differentiated scalar is that candidate's class logit:

- Faster / Mask / Keypoint R-CNN: row ``r`` of ``box_predictor``'s class logits, column
  ``k`` (before the softmax);
- RetinaNet: the anchor's logit for class ``k`` (before the sigmoid);
- FCOS: the location's class logit (before the sigmoid; the reported score is
  ``sqrt(sigmoid(logit) * sigmoid(centerness))``);
- SSD / SSDlite: the anchor's row of class logits, column ``k`` (before the softmax).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import boxes as box_ops

from ..core.detect import InputRecorder

__all__ = [
    "Family",
    "Origin",
    "PostprocessRecord",
    "detector_family",
    "find_detector",
    "recording_postprocess",
    "recover_origins",
]

# How far a recomputed score may be from the reported one (they are normally bit-equal).
_SCORE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Family:
    """A torchvision detector family: where its post-processing lives, its default layer."""

    name: str  # "faster_rcnn" (incl. Mask, Keypoint R-CNN), "retinanet", "fcos", "ssd"
    two_stage: bool
    default_layer: str


def detector_family(model: nn.Module) -> Family:
    """The family of a torchvision detector; a clear error for anything else."""
    if isinstance(model, FasterRCNN):  # MaskRCNN and KeypointRCNN subclass it
        return Family("faster_rcnn", True, "roi_heads.box_roi_pool")
    if isinstance(model, RetinaNet):
        return Family("retinanet", False, "head.classification_head.conv")
    if isinstance(model, FCOS):
        return Family("fcos", False, "head.classification_head.conv")
    if isinstance(model, SSD):
        features = getattr(model.backbone, "features", None)
        # SSDlite runs its feature blocks one by one (the Sequential itself is never called).
        ssdlite = isinstance(features, nn.Sequential) and isinstance(features[0], nn.Sequential)
        return Family("ssd", False, "backbone.features.0" if ssdlite else "backbone.features")
    raise TypeError(
        f"DetectionCAM explains torchvision detectors (FasterRCNN, MaskRCNN, KeypointRCNN, "
        f"RetinaNet, FCOS, SSD); got {type(model).__name__}. For detectron2 models use "
        "detectron2_hooks.DetectionCAM."
    )


def find_detector(network: nn.Module) -> tuple[str, nn.Module] | None:
    """``(path, detector)``: ``network`` itself (path ``""``) when it is a torchvision
    detector, else its outermost torchvision detector submodule (a LightningModule holding
    ``self.model = fasterrcnn_...()``: path ``"model"``); None when there is none."""
    for path, module in network.named_modules():
        if isinstance(module, (FasterRCNN, RetinaNet, FCOS, SSD)):
            return path, module
    return None


@dataclass
class PostprocessRecord:
    """What the post-processing method was given and returned in one forward."""

    args: tuple = ()
    result: Any = None
    calls: int = 0
    #: One-stage: the class-logit conv's output per level ``(N, A * K, H, W)``, recorded
    #: before the head concatenates the levels (a logit read from the concatenation would
    #: send every backward through every level's head).
    level_logits: list = field(default_factory=list)


def _owner(model: nn.Module, family: Family) -> nn.Module:
    return model.roi_heads if family.two_stage else model


@contextlib.contextmanager
def recording_postprocess(model: nn.Module, family: Family) -> Iterator[PostprocessRecord]:
    """Bind a recording wrapper of ``postprocess_detections`` on the instance for the block.

    The instance attribute shadows the class's method; on exit it is deleted (or, if the
    user had bound one of their own, put back), whatever happened inside the block.
    """
    owner = _owner(model, family)
    had_own = "postprocess_detections" in vars(owner)
    previous = vars(owner).get("postprocess_detections")
    original = owner.postprocess_detections
    record = PostprocessRecord()

    def recorded(*args):
        result = original(*args)
        record.args, record.result = args, result
        record.calls += 1
        return result

    owner.postprocess_detections = recorded
    logits_conv = None
    if not family.two_stage and family.name != "ssd":
        logits_conv = getattr(model.head.classification_head, "cls_logits", None)
    try:
        with InputRecorder(logits_conv, calls=64, grad_output=False) as levels:
            yield record
        record.level_logits = [output for _, output in levels.calls]
    finally:
        if had_own:
            owner.postprocess_detections = previous
        else:
            del owner.postprocess_detections


@dataclass
class Origin:
    """Where one final detection came from, and the logit that explains it.

    ``rank`` is the row in the image's output; ``box``/``score``/``label`` are the
    post-processed values before the transform rescales them (the network's pixels);
    ``logit`` is a grad-connected scalar; ``level``/``anchor_index`` for one-stage
    detectors, ``proposal_index``/``roi_row``/``proposal_box`` (network pixels) for
    two-stage ones.
    """

    image_index: int
    rank: int
    label: int
    score: torch.Tensor
    logit: torch.Tensor
    level: int | None = None
    anchor_index: int | None = None
    proposal_index: int | None = None
    roi_row: int | None = None
    proposal_box: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class _Level:
    """Candidates of one image at one level: ``scores (A, K')`` as post-processing computed
    them and ``boxes (A, K', 4)`` or ``(A, 4)``, column ``c`` for class ``c + offset`` (the
    background column dropped); ``logits (A, K)``, column = class id, on the graph."""

    scores: torch.Tensor
    boxes: torch.Tensor
    offset: int = 0
    logits: torch.Tensor | None = None


def _outputs(family: Family, result) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``[(boxes, scores, labels)]`` per image from the post-processing's return value."""
    if family.two_stage:
        boxes, scores, labels = result
        return list(zip(boxes, scores, labels))
    return [(d["boxes"], d["scores"], d["labels"]) for d in result]


def _candidates(
    model: nn.Module, family: Family, args: tuple, level_logits: list = ()
) -> list[list[_Level]]:
    """Per image, per level: every (anchor or proposal, class) the method scored, with the
    same ops on the same tensors as torchvision's method (so the scores are bit-equal)."""
    with torch.no_grad():
        candidates = _candidates_no_grad(_owner(model, family), family, args)
    # The logits stay on the graph: indexed here, under grad mode, never under no_grad.
    for levels, tables in zip(candidates, _logit_tables(family, args, list(level_logits))):
        for level, table in zip(levels, tables):
            level.logits = table
    return candidates


def _logit_tables(
    family: Family, args: tuple, record_levels: list = ()
) -> list[list[torch.Tensor]]:
    """Per image, per level: the ``(A, K)`` class logits, column = class id."""
    if family.name == "faster_rcnn":
        class_logits, _, proposals, _ = args
        return [[t] for t in class_logits.split([len(p) for p in proposals], 0)]
    if family.name == "ssd":
        return [[t] for t in args[0]["cls_logits"]]
    logits = args[0]["cls_logits"]
    per_level = _per_level_logits(record_levels, logits)
    return [[c[index] for c in per_level] for index in range(len(args[2]))]


def _per_level_logits(level_logits: list, split: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per level ``(N, H * W * A, K)`` logits read from the recorded per-level conv outputs,
    in the rows torchvision's heads flatten them to (``view(N, A, K, H, W).permute(0, 3, 4,
    1, 2)``); the split concatenation when the recording does not match it (a custom head)."""
    if len(level_logits) != len(split):
        return split
    out = []
    for conv, flat in zip(level_logits, split):
        batch, channels, height, width = conv.shape
        classes = flat.shape[-1]
        if channels % classes or channels // classes * height * width != flat.shape[1]:
            return split
        anchors = channels // classes
        table = conv.view(batch, anchors, classes, height, width).permute(0, 3, 4, 1, 2)
        out.append(table.reshape(batch, -1, classes))
    return out


def _candidates_no_grad(owner: nn.Module, family: Family, args: tuple) -> list[list[_Level]]:
    # Scores and boxes need no graph (only the logits do, and they are the recorded
    # tensors themselves, indexed later under grad mode).
    if family.name == "faster_rcnn":
        class_logits, box_regression, proposals, image_shapes = args
        per_image = [len(p) for p in proposals]
        pred_boxes = owner.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)
        out = []
        for boxes, scores, shape in zip(
            pred_boxes.split(per_image, 0), pred_scores.split(per_image, 0), image_shapes
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            out.append([_Level(scores[:, 1:], boxes[:, 1:], offset=1)])
        return out
    if family.name == "ssd":
        head_outputs, anchors, image_shapes = args
        pred_scores = F.softmax(head_outputs["cls_logits"], dim=-1)
        out = []
        for regression, scores, image_anchors, shape in zip(
            head_outputs["bbox_regression"], pred_scores, anchors, image_shapes
        ):
            boxes = owner.box_coder.decode_single(regression, image_anchors)
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            out.append([_Level(scores[:, 1:], boxes, offset=1)])
        return out
    head_outputs, anchors, image_shapes = args
    out = []
    for index, shape in enumerate(image_shapes):
        levels = []
        for level, (regression, logits, level_anchors) in enumerate(
            zip(
                [r[index] for r in head_outputs["bbox_regression"]],
                [c[index] for c in head_outputs["cls_logits"]],
                anchors[index],
            )
        ):
            if family.name == "retinanet":
                scores = torch.sigmoid(logits)
                boxes = owner.box_coder.decode_single(regression, level_anchors)
            else:  # fcos
                centerness = head_outputs["bbox_ctrness"][level][index]
                scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness))
                boxes = owner.box_coder.decode(regression, level_anchors)
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            levels.append(_Level(scores, boxes))
        out.append(levels)
    return out


def _match(levels: list[_Level], box: torch.Tensor, score: torch.Tensor, label: int):
    """``(level, row)`` of the candidate of class ``label`` with this score (and, among equal
    scores, the nearest decoded box), and the score difference."""
    best = None
    for level_index, level in enumerate(levels):
        column = label - level.offset
        if not 0 <= column < level.scores.shape[1]:
            continue
        with torch.no_grad():
            diff = (level.scores[:, column] - score).abs()
            smallest = diff.min()
            rows = torch.nonzero(diff == smallest).flatten()
            boxes = level.boxes[rows, column] if level.boxes.dim() == 3 else level.boxes[rows]
            distance = (boxes - box).abs().sum(dim=1)
            pick = int(distance.argmin())
        key = (float(smallest), float(distance[pick]))
        if best is None or key < best[0]:
            best = (key, level_index, int(rows[pick]))
    return best


def recover_origins(
    model: nn.Module, family: Family, record: PostprocessRecord, ranks: list[list[int]]
) -> list[list[Origin]]:
    """One list of :class:`Origin` per image: those of the output rows ``ranks[image]``.

    Raises:
        RuntimeError: when post-processing did not run exactly once, or an output row has
            no candidate with its score (a post-processing this code does not know).
    """
    if record.calls != 1:
        raise RuntimeError(
            f"the detector's postprocess_detections ran {record.calls} times in one forward; "
            "DetectionCAM needs it to run once (the model's own eval forward)"
        )
    candidates = _candidates(model, family, record.args, record.level_logits)
    outputs = _outputs(family, record.result)
    origins: list[list[Origin]] = []
    offsets = [0]
    if family.two_stage:
        for proposals in record.args[2]:
            offsets.append(offsets[-1] + len(proposals))
    for image_index, ((boxes, scores, labels), levels) in enumerate(zip(outputs, candidates)):
        image_origins = []
        for rank in ranks[image_index]:
            label = int(labels[rank])
            found = _match(levels, boxes[rank].detach(), scores[rank].detach(), label)
            if found is None or found[0][0] > _SCORE_TOLERANCE * max(
                1.0, float(scores[rank].detach())
            ):
                raise RuntimeError(
                    f"could not tell which anchor or proposal detection {rank} of image "
                    f"{image_index} came from (its score is not among the scores "
                    f"{type(model).__name__}'s post-processing computed); a customised "
                    "postprocess_detections is not supported"
                )
            _, level_index, row = found
            level = levels[level_index]
            origin = Origin(
                image_index=image_index,
                rank=rank,
                label=label,
                score=scores[rank],
                logit=level.logits[row, label],
            )
            if family.two_stage:
                origin.proposal_index = row
                origin.roi_row = offsets[image_index] + row
                origin.proposal_box = record.args[2][image_index][row].detach().clone()
            else:
                origin.level = level_index
                origin.anchor_index = row
            image_origins.append(origin)
        origins.append(image_origins)
    return origins
