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
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from ..core.detections import Detection
from ..core.layers import unwrap_model
from ..core.render import caption, draw_boxes, overlay, resize_max, to_uint8_image
from ..core.tracking import DriftTracker
from ..detection.explain import DetectionCAM
from ..detection.heads import find_detector
from ..pictures import class_text, evidence_caption, film_strip, sheet
from .base import CAMTask, PassReport, probe_output

#: The detection's own box in a tile (the ground-truth box is green).
DETECTION_COLOR = (255, 220, 0)

__all__ = ["DetectionSamples", "DetectionTask", "MATCH_IOU", "match_objects"]

#: Overlap a detection needs with a ground-truth box (same class) to be that object's.
MATCH_IOU = 0.5
#: Passes kept per film strip (the first and the latest ones).
_STRIP_PASSES = 12

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


@dataclass
class DetectionResult:
    """One pass: per image, per ground-truth object, the detection explained (None: missed)."""

    objects: list[list[Detection | None]]
    layer: str


class DetectionTask(CAMTask):
    """torchvision detectors with ``(images, targets)`` batches (module docstring)."""

    name: ClassVar[str] = "detection"
    samples_class = DetectionSamples

    def __init__(self, options):
        super().__init__(options)
        self._trackers = {
            m: DriftTracker(leave_out_empty=True, always_defined=True) for m in options.methods
        }
        self._firsts: list[np.ndarray] = []
        self._strips: dict[str, list[list[np.ndarray]]] = {m: [] for m in options.methods}
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
        if not any(len(b) for b in boxes):
            raise ValueError(
                "no image of the batch has a ground-truth box (every target's boxes is empty): "
                "the detection pictures and energy_in_box explain ground-truth objects; use "
                "validation images that hold objects"
            )
        return DetectionSamples([i.detach().float().cpu().clone() for i in images], boxes, labels)

    def check_samples(self, samples: DetectionSamples) -> None:
        if not (isinstance(self.options.target, str) and self.options.target == "auto"):
            raise ValueError(
                f"target={self.options.target!r} chooses a class for classifiers; the detection "
                "task explains, per ground-truth object, the detection that finds it: leave "
                "target at its default"
            )
        if self.options.faithfulness:
            raise ValueError(
                "faithfulness metrics are not measured for detections (a detector's proposals "
                "move when the image is perturbed); leave faithfulness=() for a detector"
            )
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

    def _picture(self, samples: DetectionSamples, index: int) -> np.ndarray:
        return to_uint8_image(samples.images[index], self.options.mean, self.options.std)

    def _tile(self, image, det, box, label, method, size) -> np.ndarray:
        """The object's tile: its ground-truth box in green; when a detection found it, the
        detection's own box in yellow and its map (or, without evidence, the words)."""
        names = self.options.class_names
        if det is None:
            text = f"{class_text(label, names)}: missed"
            return caption(resize_max(draw_boxes(image, box[None]), size), text)
        found = det.evidence[method]
        text = evidence_caption(f"{class_text(det.class_id, names)} {det.score:.2f}", found)
        picture = image  # no evidence: said, never drawn blank
        if found:
            picture = overlay(image, det.maps[method], self.options.colormap, self.options.alpha)
        picture = draw_boxes(picture, torch.as_tensor(det.box)[None], color=DETECTION_COLOR)
        return caption(resize_max(draw_boxes(picture, box[None]), size), text)

    def report(
        self, result: DetectionResult, samples: DetectionSamples, step: int, epoch: int
    ) -> PassReport:
        report = PassReport()
        pictures = [self._picture(samples, i) for i in range(len(samples))]
        if not self._firsts:
            names = self.options.class_names
            for index, image in enumerate(pictures):
                for box, label in zip(samples.boxes[index], samples.labels[index].tolist()):
                    first = resize_max(draw_boxes(image, box[None]), self.options.filmstrip_size)
                    self._firsts.append(caption(first, f"input: {class_text(label, names)}"))
        for method in self.options.methods:
            tiles, thumbs = [], []
            measured = _ObjectScalars()
            number = 0
            for index, dets in enumerate(result.objects):
                measured.start_image()
                for box, label, det in zip(
                    samples.boxes[index], samples.labels[index].tolist(), dets
                ):
                    tile = self._tile(
                        image=pictures[index],
                        det=det,
                        box=box,
                        label=label,
                        method=method,
                        size=self.options.max_image_size,
                    )
                    tiles.append(tile)
                    report.images.append((f"{method}/object_{number:02d}", tile, None))
                    thumbs.append(
                        self._tile(
                            pictures[index], det, box, label, method, self.options.filmstrip_size
                        )
                    )
                    if det is None:
                        measured.missed()
                    else:
                        measured.found(
                            self._trackers[method].update(
                                number,
                                det.maps[method][None],
                                boxes=box[None],
                                evidence=torch.tensor([det.evidence[method]]),
                            ),
                            evidence=det.evidence[method],
                        )
                    number += 1
            report.images.append((f"{method}/grid", sheet(tiles), None))
            summary = measured.means()
            for name, value in summary.items():
                report.scalars[f"{method}/{name}"] = value
            report.summary[method] = summary
            for name, per in measured.per_image.items():
                report.per_image[f"{method}/{name}"] = per
            self._strips[method].append(thumbs)
            if len(self._strips[method]) > _STRIP_PASSES:
                del self._strips[method][1]  # keep the first pass and the latest ones
        return report

    def filmstrip(self, method: str) -> np.ndarray:
        return film_strip(self._firsts, self._strips[method])

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"trackers": {m: t.state_dict() for m, t in self._trackers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for method, tracker_state in (state.get("trackers") or {}).items():
            if method in self._trackers:
                self._trackers[method].load_state_dict(tracker_state)
