"""Each task's attention metrics over whole batches, as sums (``GradCAMCallback(metrics_on=
"validation")``).

A :class:`PopulationMeasure` explains one batch the way its task explains the fixed samples
and adds, per method, sums to a ``core.population.MetricSums``; :meth:`PopulationMeasure.means`
turns the (reduced) sums into the task's scalars, under the tags the task's ``report`` gives
them. The rules are the tasks' own (``core.tracking.DriftTracker(always_defined=True)``): a
map without positive evidence, or a ground-truth object no detection found, counts **0**
energy and no pointing hit, and every scalar is defined at every pass, so the means over the
fixed samples' images equal the sample path's values on those images.

Classification (region: the deciding object's box or mask of each image, ``n`` maps)::

    energy_in_box    = sum_i share_i / n      share_i = 0 without evidence
    pointing_game    = sum_i hit_i / n        hit_i = 0 without evidence
    no_evidence_rate = #(maps without evidence) / n

Segmentation: the same over every (image, ground-truth class but background) map, with
``energy_in_mask`` for ``energy_in_box``, and per class (``class_KK/...``, for class ids
below :data:`MAX_CLASSES`). Detection, over the ``n`` ground-truth objects, ``f`` of them
found by a detection (``tasks.detection``)::

    energy_in_box = sum share / n,  pointing_game = sum hit / n   (missed: 0)
    found_rate = f / n,  no_evidence_rate = #(found without evidence) / f   (1 when f = 0)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.drift import box_masks, energy_share, pointing_hits
from ..core.layers import full_layer_name
from ..core.population import MetricSums
from ..core.tap import ForwardTap
from ..core.tracking import has_evidence
from ..engine import CAMEngine
from .base import CAMTask
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = [
    "ClassificationMeasure",
    "DetectionMeasure",
    "MAX_CLASSES",
    "MEASURED_FIELDS",
    "PopulationMeasure",
    "SegmentationMeasure",
    "measure_for",
]

#: Segmentation classes with their own sums (class ids at or above it enter the overall ones).
MAX_CLASSES = 256


def _region_sums(maps: torch.Tensor, regions: torch.Tensor, evidence: torch.Tensor) -> dict:
    """Sums over ``maps (N, H, W)`` in ``regions (N, H, W)``; no evidence: 0 and no hit.
    Computed on the maps' device, with one transfer of the sums."""
    evidence = evidence.to(maps.device)
    share = torch.where(evidence, energy_share(maps, regions).double(), 0.0)
    hits = pointing_hits(maps, regions) & evidence
    values = torch.stack([share.sum(), hits.sum().double(), (~evidence).sum().double()])
    energy_sum, hit_count, no_evidence = values.tolist()
    return {
        "energy_sum": energy_sum,
        "hits": hit_count,
        "maps": float(len(maps)),
        "no_evidence": no_evidence,
    }


def _region_means(s: dict[str, float], energy: str) -> dict[str, float]:
    n = s["maps"]
    return {
        energy: s["energy_sum"] / n if n else 0.0,
        "pointing_game": s["hits"] / n if n else 0.0,
        "no_evidence_rate": s["no_evidence"] / n if n else 1.0,
    }


class PopulationMeasure(ABC):
    """One task's sums over batches (module docstring). ``task`` parses the batches and
    knows the layer; ``fields`` and ``groups`` shape the ``MetricSums`` table."""

    fields: ClassVar[tuple[str, ...]]
    groups: ClassVar[int] = 1

    def __init__(self, task: CAMTask):
        self.task = task
        self.methods = tuple(task.options.methods)

    def new_sums(self) -> MetricSums:
        return MetricSums(self.methods, self.fields, self.groups)

    @abstractmethod
    def check(self, samples: Any) -> None:
        """Raise, saying what to pass, when batches like ``samples`` cannot be measured."""

    @abstractmethod
    def measure(
        self, network: nn.Module, batch: Any, sums: MetricSums, tap: ForwardTap | None = None
    ) -> int:
        """Explain ``batch`` and add its sums; the number of images measured. ``tap``: the
        :meth:`tap` that was open around the caller's own forward of this batch; what it
        took is used in place of a forward of the measure's own."""

    def tap(self, network: nn.Module, batch: Any) -> ForwardTap | None:
        """A ``core.tap.ForwardTap`` to open around the caller's own ``no_grad`` forward of
        ``batch`` (the user's ``validation_step``), so that :meth:`measure` needs no
        forward of its own; ``None`` (the default) when the measure cannot use one."""
        return None

    @abstractmethod
    def means(self, sums: MetricSums) -> dict[str, float]:
        """``{"<method>/<name>": value}``: the task's scalars from the sums."""


class _ReusesForward:
    """A measure that reuses the caller's forward through a ``core.tap.ForwardTap``, once
    one batch has shown that its own pass (the head run with autograd recording) gives the
    scores the caller's ``no_grad`` forward gave, bit for bit (some kernels, attention
    backends among them, take another path when autograd records). ``_refused``: why it
    never will."""

    _verified: bool = False
    _refused: str | None = None

    def _verify(self, tap: ForwardTap, scores: torch.Tensor) -> None:
        observed = tap.observed.to(device=scores.device, dtype=scores.dtype)
        if torch.equal(observed, scores):
            self._verified = True
            return
        difference = (
            float((observed - scores).abs().max()) if observed.shape == scores.shape else None
        )
        self._refused = tap.skipped = (
            "the layers after the explained one give other scores when autograd records "
            f"(largest difference {difference:.3g}), so reusing the forward would change "
            "validation_step's outputs"
            if difference is not None
            else "the scores of validation_step's forward have another shape"
        )


class ClassificationMeasure(_ReusesForward, PopulationMeasure):
    """Classification batches with the deciding object's ``boxes`` or ``masks``. The class
    explained is the label when the batch has labels (``target="auto"``/``"label"``), the
    prediction at this pass (``"prediction"``, or no labels), or the fixed class id or
    callable ``target`` gives."""

    fields = ("energy_sum", "hits", "maps", "no_evidence")

    def __init__(self, task: CAMTask):
        super().__init__(task)
        target = task.options.target
        if isinstance(target, torch.Tensor):
            raise ValueError(
                "target= gives one class id per fixed sample; metrics_on='validation' explains "
                "every validation image, so use target='auto', 'label', 'prediction', one class "
                "id for all, or a callable"
            )
        self._engine: CAMEngine | None = None
        self._engine_for: int | None = None
        self._full_names: dict[tuple[int, str], str] = {}  # (network, engine's name): full name

    def check(self, samples: Any) -> None:
        if samples.boxes is None and samples.masks is None:
            raise ValueError(
                "metrics_on='validation' measures energy_in_box and pointing_game on every "
                "validation batch, but the batches carry no boxes or masks of the deciding "
                "object: return (images, labels, boxes), (images, labels, masks) or a dict "
                "with 'boxes'/'masks' from the validation dataloader (or batch_parser=), or "
                "use metrics_on='samples'"
            )
        target = self.task.options.target
        if isinstance(target, str) and target == "label" and samples.labels is None:
            raise ValueError(
                "target='label' but the validation batches carry no labels; return (images, "
                "labels, boxes) from the dataloader or use target='auto'/'prediction'"
            )

    def _targets(self, samples: Any) -> object:
        target = self.task.options.target
        if not isinstance(target, str):
            return target  # a class id or a callable
        if target == "prediction":
            return None
        return samples.labels  # "auto" / "label"; None (the prediction) without labels

    def _cam(self, network: nn.Module) -> CAMEngine:
        if self._engine is None or self._engine_for != id(network):
            options = self.task.options
            self._engine = CAMEngine(
                network,
                layer=self.task.layer_name or options.layer,
                methods=options.methods,
                reshape=options.reshape,
            )
            self._engine_for = id(network)
        return self._engine

    def tap(self, network: nn.Module, batch: Any) -> ForwardTap | None:
        """A tap on the batch's images once the engine knows its layer: observing only,
        until one batch has verified that the engine's pass gives validation_step's scores
        (:meth:`measure`); taking the gradient after that."""
        if self._refused is not None:
            return None
        samples = self.task.parse_batch(batch)
        engine = self._cam(network)
        return engine.tap(
            samples.images, targets=self._targets(samples), observe_only=not self._verified
        )

    def measure(
        self, network: nn.Module, batch: Any, sums: MetricSums, tap: ForwardTap | None = None
    ) -> int:
        samples = self.task.parse_batch(batch)
        self.check(samples)
        engine = self._cam(network)
        if tap is not None and tap.result is not None:
            result = engine.explain_tapped(samples.images, tap.result)
        else:
            result = engine.explain(samples.images, targets=self._targets(samples))
            if tap is not None and tap.observed is not None:
                self._verify(tap, result.scores)
        key = (id(network), result.layer)
        if key not in self._full_names:
            self._full_names[key] = full_layer_name(network, result.layer)
        self.task.layer_name = self._full_names[key]
        size = tuple(samples.images.shape[-2:])
        regions = samples.masks if samples.masks is not None else box_masks(samples.boxes, size)
        for method in self.methods:
            maps = result.maps[method][:, 0].float()
            layer_maps = result.layer_maps.get(method)
            evidence = has_evidence(layer_maps[:, 0] if layer_maps is not None else maps)
            sums.add(method, _region_sums(maps, regions, evidence))
        return len(samples)

    def means(self, sums: MetricSums) -> dict[str, float]:
        out: dict[str, float] = {}
        for method in self.methods:
            means = _region_means(sums.totals(method), "energy_in_box")
            out |= {f"{method}/{name}": value for name, value in means.items()}
        return out


class SegmentationMeasure(_ReusesForward, PopulationMeasure):
    """Segmentation ``(images, masks)`` batches: one map per (image, ground-truth class),
    from the caller's own forward once verified (as :class:`ClassificationMeasure`)."""

    fields = ClassificationMeasure.fields
    groups = MAX_CLASSES + 1

    def check(self, samples: Any) -> None:
        pass  # parse_batch refuses batches without (B, H, W) class-id masks

    def tap(self, network: nn.Module, batch: Any) -> ForwardTap | None:
        if self._refused is not None:
            return None
        samples = self.task.parse_batch(batch)
        return self.task.tap(network, samples, observe_only=not self._verified)

    def measure(
        self, network: nn.Module, batch: Any, sums: MetricSums, tap: ForwardTap | None = None
    ) -> int:
        task = self.task
        samples = task.parse_batch(batch)
        if not any(samples.classes(task.background)):
            return len(samples)  # only background: no map to measure
        if tap is not None and tap.result is not None:
            result = task.explain_tapped(network, samples, tap.result)
        else:
            result = task.explain_maps(network, samples)
            if tap is not None and tap.observed is not None:
                self._verify(tap, result.scores)
        # Every (image, class) map at once; per class, the rows of that class.
        rows, columns = (result.class_ids >= 0).nonzero(as_tuple=True)
        class_ids = result.class_ids[rows, columns]
        masks = samples.masks.to(class_ids.device)[rows] == class_ids[:, None, None]
        groups = [
            (c + 1, class_ids == c)
            for c in torch.unique(class_ids).tolist()
            if 0 <= c < MAX_CLASSES
        ]
        for method in self.methods:
            maps = result.maps[method][rows, columns].float()
            evidence = result.evidence[method][rows, columns]
            regions = masks.to(maps.device)
            sums.add(method, _region_sums(maps, regions, evidence))
            for group, chosen in groups:
                chosen = chosen.to(maps.device)
                values = _region_sums(maps[chosen], regions[chosen], evidence[chosen])
                sums.add(method, values, group=group)
        return len(samples)

    def means(self, sums: MetricSums) -> dict[str, float]:
        out: dict[str, float] = {}
        for method in self.methods:
            means = _region_means(sums.totals(method), "energy_in_mask")
            out |= {f"{method}/{name}": value for name, value in means.items()}
            for group in sums.groups_with(method, "maps"):
                per_class = _region_means(sums.totals(method, group), "energy_in_mask")
                out |= {f"{method}/class_{group - 1:02d}/{k}": v for k, v in per_class.items()}
        return out


class DetectionMeasure(PopulationMeasure):
    """Detection ``(images, targets)`` batches: per ground-truth object, the detection that
    finds it (``tasks.detection.match_objects``); images without objects add nothing."""

    fields = ("energy_sum", "hits", "objects", "found", "empty")

    def check(self, samples: Any) -> None:
        pass  # parse_batch already refuses batches that are not (images, targets)

    def measure(
        self, network: nn.Module, batch: Any, sums: MetricSums, tap: ForwardTap | None = None
    ) -> int:
        task = self.task
        samples = task.measured_samples(batch)
        if not any(len(boxes) for boxes in samples.boxes):
            return len(samples)  # no object to measure in this batch
        result = task.explain(network, samples)
        for method in self.methods:
            values = dict.fromkeys(self.fields, 0.0)
            for index, detections in enumerate(result.objects):
                for box, det in zip(samples.boxes[index], detections):
                    values["objects"] += 1
                    if det is None:
                        continue  # missed: 0 energy, no hit
                    values["found"] += 1
                    has = bool(det.evidence[method])
                    if not has:
                        values["empty"] += 1
                        continue
                    cam = det.maps[method].detach().float().cpu()[None]
                    region = box_masks(box[None], tuple(cam.shape[-2:]))
                    values["energy_sum"] += float(energy_share(cam, region)[0])
                    values["hits"] += float(pointing_hits(cam, region)[0])
            sums.add(method, values)
        return len(samples)

    def means(self, sums: MetricSums) -> dict[str, float]:
        out: dict[str, float] = {}
        for method in self.methods:
            s = sums.totals(method)
            n, found = s["objects"], s["found"]
            out[f"{method}/energy_in_box"] = s["energy_sum"] / n if n else 0.0
            out[f"{method}/pointing_game"] = s["hits"] / n if n else 0.0
            out[f"{method}/found_rate"] = found / max(1.0, n)
            out[f"{method}/no_evidence_rate"] = s["empty"] / found if found else 1.0
        return out


_MEASURES: dict[type[CAMTask], type[PopulationMeasure]] = {
    ClassificationTask: ClassificationMeasure,
    SegmentationTask: SegmentationMeasure,
    DetectionTask: DetectionMeasure,
}


#: Every field a built-in measure adds up: one table shape for every task, so that the one
#: ``all_reduce`` at the epoch's end is the same collective on every rank.
MEASURED_FIELDS = tuple(dict.fromkeys((*ClassificationMeasure.fields, *DetectionMeasure.fields)))


def measure_for(task: CAMTask) -> PopulationMeasure:
    """The measure of ``task``'s kind (a subclass of a built-in task gets its measure); a
    clear error for a task that has none."""
    for kind, measure in _MEASURES.items():
        if isinstance(task, kind):
            return measure(task)
    raise ValueError(
        f"metrics_on='validation' measures the classification, detection and segmentation "
        f"tasks; task {task.name!r} has no whole-epoch measure: use metrics_on='samples'"
    )
