"""Detection with torchvision detectors: per ground-truth object, the map of the detection
that finds it.

A batch is torchvision's ``(images, targets)``: ``images`` a list of ``(3, H, W)`` float
images (or a ``(B, 3, H, W)`` tensor), ``targets`` a list of ``{"boxes": (n, 4) (x0, y0, x1,
y1) in pixels, "labels": (n,)}``. At each pass, for every fixed image and every ground-truth
object, the detection explained is the one that best matches the object: same class, IoU >=
0.5 with its box, the highest score among those (``lightning_gradcam.detection.DetectionCAM``
explains exactly those detections, with their own class logit). An object no detection
matches is *missed*: its tile says so.

Scalars per method, each but drift logged at every pass from the first (a monitor can rely
on them),
means over all ground-truth objects (one ``core.tracking.DriftTracker`` key per object, its
ground-truth box as the region):

- ``energy_in_box``: share of the map's total inside the object's ground-truth box; a missed
  object, or a map with no positive evidence, counts **0** (no map on the object);
- ``pointing_game``: share of objects whose map's maximum lies inside the box (Zhang et al.,
  ECCV 2016); missed or without evidence: no hit;
- ``found_rate``: share of the objects a detection found;
- ``no_evidence_rate``: share of the found objects' maps with no positive evidence (1 when
  none is found): with ``found_rate`` it says why the two above are low;
- ``drift_vs_prev`` / ``drift_vs_first``: ``1 - Pearson`` between an object's map and its map
  at the previous / first pass at which it was found with evidence, over the objects that
  have both (from the second pass on: drift needs two passes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from ..core.detections import Detection
from ..core.faithfulness import check_metrics
from ..core.layers import unwrap_model
from ..core.render import draw_boxes, to_uint8_image
from ..core.tracking import DriftTracker
from ..detection.explain import DetectionCAM
from ..detection.heads import find_detector
from ..pictures import class_text
from .base import CAMTask, PassReport, ReportItem, probe_output
from .options import check_auto_target

#: The detection's own box in a tile (the ground-truth box is green).
DETECTION_COLOR = (255, 220, 0)

__all__ = ["DetectionSamples", "DetectionTask", "MATCH_IOU", "match_objects"]

#: Overlap a detection needs with a ground-truth box (same class) to be that object's.
MATCH_IOU = 0.5

_BATCH_HELP = (
    "a detection batch is torchvision's (images, targets): images a list of (3, H, W) float "
    'tensors, targets a list of {"boxes": (n, 4) (x0, y0, x1, y1), "labels": (n,)}, one per '
    "image; pass batch_parser= to GradCAMCallback to turn your batches into that"
)


@dataclass
class DetectionSamples:
    """Fixed detection samples on the CPU: ``images`` ``[(3, H, W)]`` float, ``boxes``
    ``[(n_i, 4)]`` float32 and ``labels`` ``[(n_i,)]`` long, one entry per image."""

    images: list[torch.Tensor]
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.images)

    def head(self, n: int) -> DetectionSamples:
        return self.slice(0, n)

    def slice(self, start: int, stop: int | None) -> DetectionSamples:
        return DetectionSamples(
            self.images[start:stop], self.boxes[start:stop], self.labels[start:stop]
        )

    @classmethod
    def concat(cls, parts: Sequence[DetectionSamples]) -> DetectionSamples:
        return cls(
            [i for p in parts for i in p.images],
            [b for p in parts for b in p.boxes],
            [c for p in parts for c in p.labels],
        )

    def to_state(self) -> dict[str, Any]:
        return {"images": list(self.images), "boxes": list(self.boxes), "labels": list(self.labels)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DetectionSamples:
        return cls(list(state["images"]), list(state["boxes"]), list(state["labels"]))

    def digest(self) -> str:
        hasher = hashlib.sha1()
        for image in self.images:
            hasher.update(str(tuple(image.shape)).encode())
            hasher.update(image.detach().float().cpu().contiguous().numpy().tobytes())
        return hasher.hexdigest()

    @property
    def num_objects(self) -> int:
        return sum(len(b) for b in self.boxes)


def _is_detection_output(output: Any) -> bool:
    return (
        isinstance(output, (list, tuple))
        and len(output) > 0
        and all(isinstance(o, dict) and {"boxes", "labels", "scores"} <= set(o) for o in output)
    )


def _split_batch(batch: Any) -> tuple[Sequence[torch.Tensor], Sequence[Any]]:
    if isinstance(batch, dict) and {"images", "targets"} <= set(batch):
        batch = (batch["images"], batch["targets"])
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        kind = type(batch).__name__
        size = f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else ""
        raise ValueError(f"got a batch of type {kind}{size}; {_BATCH_HELP}")
    images, targets = batch
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)) or not all(
        isinstance(i, torch.Tensor) and i.dim() == 3 for i in images
    ):
        raise ValueError(f"the batch's images are not a list of (3, H, W) tensors; {_BATCH_HELP}")
    if not isinstance(targets, (list, tuple)) or not all(
        isinstance(t, dict) and "boxes" in t for t in targets
    ):
        raise ValueError(
            f'the batch\'s targets are not a list of dicts with "boxes"; {_BATCH_HELP}'
        )
    return images, targets


def match_objects(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    det_boxes: torch.Tensor,
    det_labels: torch.Tensor,
    det_scores: torch.Tensor,
    min_iou: float = MATCH_IOU,
) -> list[int | None]:
    """Per ground-truth object, the row of the highest-scoring detection of its class whose
    box overlaps its own with IoU >= ``min_iou``; None when there is none (missed)."""
    if not len(boxes):
        return []
    if not len(det_boxes):
        return [None] * len(boxes)
    iou = box_iou(boxes.float(), det_boxes.detach().float().cpu())
    same = labels[:, None] == det_labels.detach().cpu()[None, :]
    ok = (iou >= min_iou) & same
    scores = det_scores.detach().float().cpu()[None].expand_as(iou)
    ranked = torch.where(ok, scores, torch.full_like(scores, -float("inf")))
    best = ranked.argmax(dim=1)
    return [int(b) if bool(ok[j, b]) else None for j, b in enumerate(best.tolist())]


class _ObjectScalars:
    """The pass's scalars over the ground-truth objects (module docstring): a missed object
    and a map without positive evidence count 0 in ``energy_in_box`` and ``pointing_game``;
    drift is the mean over the found objects with evidence at both passes."""

    _LOCALISATION = ("energy_in_box", "pointing_game")
    _DRIFT = ("drift_vs_prev", "drift_vs_first")

    def __init__(self) -> None:
        # per image, per scalar: the values of its objects
        self._images: list[dict[str, list[float]]] = []
        self._drift: dict[str, list[float]] = {name: [] for name in self._DRIFT}
        self.objects = self.found_count = self.empty_count = 0

    def start_image(self) -> None:
        self._images.append({name: [] for name in self._LOCALISATION})

    def missed(self) -> None:
        self.objects += 1
        for name in self._LOCALISATION:
            self._images[-1][name].append(0.0)

    def found(self, tracked: dict[str, float], evidence: bool) -> None:
        self.objects += 1
        self.found_count += 1
        self.empty_count += not evidence
        for name in self._LOCALISATION:
            self._images[-1][name].append(tracked[name])
        for name in self._DRIFT:
            if evidence and name in tracked:
                self._drift[name].append(tracked[name])

    @property
    def per_image(self) -> dict[str, list[float | None]]:
        """Per scalar, each image's mean over its objects (None: no object)."""
        return {
            name: [float(np.mean(v[name])) if v[name] else None for v in self._images]
            for name in self._LOCALISATION
        }

    def means(self) -> dict[str, float]:
        out = {
            name: float(np.mean([x for v in self._images for x in v[name]] or [0.0]))
            for name in self._LOCALISATION
        }
        out |= {name: float(np.mean(v)) for name, v in self._drift.items() if v}
        out["no_evidence_rate"] = self.empty_count / self.found_count if self.found_count else 1.0
        out["found_rate"] = self.found_count / max(1, self.objects)
        return out


@dataclass(frozen=True)
class _Object:
    """A ground-truth object of a pass: its image, its number across the images, its box and
    the detection that found it (None: missed)."""

    image: int
    number: int
    box: torch.Tensor
    detection: Detection | None


@dataclass
class DetectionResult:
    """One pass: per image, per ground-truth object, the detection explained (None: missed)."""

    objects: list[list[Detection | None]]
    layer: str


class DetectionTask(CAMTask):
    """torchvision detectors with ``(images, targets)`` batches (module docstring)."""

    name: ClassVar[str] = "detection"
    # Channel-averaged Grad-CAM at a pooler or FPN level lights every similar region; HiResCAM
    # keeps each position's own gradient, so the map is the detection's. Grad-CAM++ assumes
    # non-negative activations (after a ReLU), which FPN outputs are not.
    default_methods: ClassVar[tuple[str, ...]] = ("gradcam", "hirescam")
    samples_class = DetectionSamples

    def __init__(self, options):
        super().__init__(options)
        self._trackers = {
            m: DriftTracker(leave_out_empty=True, always_defined=True) for m in options.methods
        }
        self._cam = None
        self._cam_for: int | None = None

    # ---------------------------------------------------------------- recognition

    @classmethod
    def recognises(cls, network: nn.Module, batch: Any) -> bool:
        if find_detector(unwrap_model(network)) is not None:
            return True
        try:
            images, _ = _split_batch(batch)
        except ValueError:
            return False
        try:
            return _is_detection_output(probe_output(network, list(images[:1])))
        except Exception:  # a network that cannot take a list of images is not a detector
            return False

    # ---------------------------------------------------------------- samples

    def parse_batch(self, batch: Any) -> DetectionSamples:
        samples = self.measured_samples(batch)
        if not any(len(b) for b in samples.boxes):
            raise ValueError(
                "no image of the batch has a ground-truth box (every target's boxes is empty): "
                "the detection pictures and energy_in_box explain ground-truth objects; use "
                "validation images that hold objects"
            )
        return samples

    def measured_samples(self, batch: Any) -> DetectionSamples:
        """``batch`` as samples, a batch without any object included (a whole-set measure
        adds nothing for it; :meth:`parse_batch` refuses it as fixed samples)."""
        if self.options.batch_parser is not None:
            batch = self.options.batch_parser(batch)
        images, targets = _split_batch(batch)
        if not len(images):
            raise ValueError(f"the batch holds no images; {_BATCH_HELP}")
        if len(images) != len(targets):
            raise ValueError(
                f"the batch holds {len(images)} images but {len(targets)} targets; "
                "give one target dict per image"
            )
        boxes, labels = [], []
        for index, target in enumerate(targets):
            box = torch.as_tensor(target["boxes"]).detach().float().cpu().reshape(-1, 4)
            if "labels" not in target:
                raise ValueError(f'target {index} has no "labels"; {_BATCH_HELP}')
            label = torch.as_tensor(target["labels"]).detach().long().cpu().reshape(-1)
            if len(label) != len(box):
                raise ValueError(
                    f"target {index} has {len(box)} boxes but {len(label)} labels; "
                    "give one label per box"
                )
            boxes.append(box)
            labels.append(label)
        return DetectionSamples([i.detach().float().cpu().clone() for i in images], boxes, labels)

    @classmethod
    def check_target(cls, target: object) -> str:
        return check_auto_target(
            target,
            cls.name,
            "a target chooses a class for classifiers; the detection task explains, per "
            "ground-truth object, the detection that finds it",
        )

    @classmethod
    def check_faithfulness(cls, metrics: object) -> tuple[str, ...]:
        if check_metrics(metrics):
            raise ValueError(
                "faithfulness metrics are not measured for detections (a detector's proposals "
                "move when the image is perturbed); leave faithfulness=() for a detector"
            )
        return ()

    def check_samples(self, samples: DetectionSamples) -> None:
        if not samples.num_objects:
            raise ValueError(
                "the fixed samples hold no ground-truth box; use validation images with objects"
            )

    # ---------------------------------------------------------------- the pass

    def _detection_cam(self, network: nn.Module):
        network = unwrap_model(network)
        if self._cam is not None and self._cam_for == id(network):
            return self._cam
        found = find_detector(network)
        if found is None:
            raise TypeError(
                f"{type(network).__name__} returns detections but holds no torchvision "
                "detector (FasterRCNN, MaskRCNN, KeypointRCNN, RetinaNet, FCOS, SSD); the "
                "detection task explains those (detectron2 models: use GradCAMHook)"
            )
        path, detector = found
        layer = self.options.layer
        if layer is not None and path and layer.startswith(path + "."):
            layer = layer[len(path) + 1 :]  # given from the LightningModule
        cam = DetectionCAM(detector, layer=layer, methods=self.options.methods)
        self.layer_name = f"{path}.{cam.layers[0]}" if path else cam.layers[0]
        self._cam, self._cam_for = cam, id(network)
        return cam

    def explain(self, network: nn.Module, samples: DetectionSamples) -> DetectionResult:
        cam = self._detection_cam(network)
        chosen: list[list[int | None]] = []

        def choose(outputs):
            chosen.clear()
            for out, boxes, labels in zip(outputs, samples.boxes, samples.labels):
                chosen.append(
                    match_objects(boxes, labels, out["boxes"], out["labels"], out["scores"])
                )
            return [sorted({r for r in rows if r is not None}) for rows in chosen]

        explained = cam.explain(samples.images, choose=choose)
        objects = []
        for rows, dets in zip(chosen, explained):
            by_rank = {d.rank: d for d in dets}
            objects.append([None if r is None else by_rank[r] for r in rows])
        return DetectionResult(objects, self.layer_name or "")

    def combine(self, parts: Sequence[DetectionResult]) -> DetectionResult:
        return DetectionResult([o for p in parts for o in p.objects], parts[0].layer)

    def report_items(self, result: DetectionResult, samples: DetectionSamples) -> list[ReportItem]:
        """One item per ground-truth object, numbered across the images: its box in green;
        the detection that found it, with its own box in yellow and its maps, or "missed"."""
        names, options = self.options.class_names, self.options
        items = []
        for index, dets in enumerate(result.objects):
            picture = to_uint8_image(samples.images[index], options.mean, options.std)
            for box, label, det in zip(samples.boxes[index], samples.labels[index].tolist(), dets):
                item = ReportItem(
                    tag=f"object_{len(items):02d}",
                    picture=picture,
                    text=class_text(label, names),
                    reason="missed",
                    short_reason="missed",
                    marks=partial(draw_boxes, boxes=box[None]),
                    first_text=f"input: {class_text(label, names)}",
                    data=_Object(index, len(items), box, det),
                )
                if det is not None:
                    item.text = f"{class_text(det.class_id, names)} {det.score:.2f}"
                    item.maps, item.evidence = dict(det.maps), dict(det.evidence)
                    item.map_marks = partial(
                        draw_boxes, boxes=torch.as_tensor(det.box)[None], color=DETECTION_COLOR
                    )
                items.append(item)
        return items

    def measure(
        self,
        method: str,
        items: list[ReportItem],
        samples: DetectionSamples,
        report: PassReport,
    ) -> dict[str, float]:
        measured = _ObjectScalars()
        objects = [item.data for item in items]
        for index in range(len(samples)):
            measured.start_image()
            for obj in (o for o in objects if o.image == index):
                if obj.detection is None:
                    measured.missed()
                    continue
                found = obj.detection.evidence[method]
                tracked = self._trackers[method].update(
                    obj.number,
                    obj.detection.maps[method][None],
                    boxes=obj.box[None],
                    evidence=torch.tensor([found]),
                )
                measured.found(tracked, evidence=found)
        for name, per in measured.per_image.items():
            report.per_image[f"{method}/{name}"] = per
        return measured.means()

    def monitored_scalars(self, samples: Any) -> tuple[str, ...]:
        names = ("energy_in_box", "pointing_game", "no_evidence_rate", "found_rate")
        return tuple(f"{method}/{name}" for method in self.options.methods for name in names)

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"trackers": {m: t.state_dict() for m, t in self._trackers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for method, tracker_state in (state.get("trackers") or {}).items():
            if method in self._trackers:
                self._trackers[method].load_state_dict(tracker_state)
