"""Classification: one map per image, explaining one fixed class's score.

A map explains the score ``y^c`` of the image's target class (the label when labels are
known, else the prediction at the first pass, or what the callback's ``target`` says), fixed
for the whole run so that a map moves because attention drifted, never because the
explained class changed. Maps come from ``CAMEngine`` (one forward, one backward for every
gradient method). Where the deciding object's box or mask is known, each pass measures
``energy_in_box`` (share of the map inside it), ``pointing_game`` (whether the map's maximum
lies inside) and ``no_evidence_rate`` (``core.tracking``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.faithfulness import mean_scalars
from ..core.layers import full_layer_name
from ..core.render import draw_boxes, to_uint8_image
from ..core.tracking import DriftTracker, has_evidence
from ..engine import CAMEngine, CAMResult
from ..pictures import class_text, inputs_sheet
from .base import CAMTask, PassReport, ReportItem, TaskOptions
from .classification_samples import Samples, default_batch_parser, make_samples, to_samples

__all__ = ["ClassificationTask", "check_samples"]


def check_samples(
    samples: Samples,
    target: object,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> None:
    """The images to explain against the other arguments: one class id per image, labels
    for ``target="label"``, one ``mean``/``std`` value per channel (or one for all)."""
    if isinstance(target, torch.Tensor) and target.numel() != len(samples):
        raise ValueError(
            f"target gives {target.numel()} class ids but {len(samples)} images are "
            "explained; give one class id per image"
        )
    if isinstance(target, str) and target == "label" and samples.labels is None:
        raise ValueError(
            "target='label' but the images come without labels; pass labels=..., return "
            "(images, labels) from batch_parser, or use target='auto'/'prediction'"
        )
    if samples.images.dtype == torch.uint8 and (mean is not None or std is not None):
        raise ValueError(
            "mean/std undo a float normalisation for display, but the images are uint8 (read "
            "as 0-255); leave mean and std out for a uint8 pipeline"
        )
    channels = samples.images.shape[1]
    for name, stats in (("mean", mean), ("std", std)):
        if stats is not None and len(stats) not in (1, channels):
            raise ValueError(
                f"{name} has {len(stats)} values but the images have {channels} channels"
            )


def score_texts(
    class_ids: torch.Tensor, scores: torch.Tensor, class_names: Sequence[str] | None = None
) -> list[str]:
    """``<class> <score>`` per sample (``score <s>`` for a callable's target, id < 0)."""
    texts = []
    for class_id, score in zip(class_ids.tolist(), scores.tolist()):
        name = "score" if class_id < 0 else class_text(class_id, class_names)
        texts.append(f"{name} {score + 0.0:.2f}")  # + 0.0: a score of -0.0 reads 0.00
    return texts


def _is_callable_target(target: object) -> bool:
    return callable(target) and not isinstance(target, torch.Tensor)


class ClassificationTask(CAMTask):
    """Images ``(B, C, H, W)`` -> class scores ``(B, K)``: a map per image for one class.

    The fallback task: it recognises any model the other tasks do not claim.
    """

    name = "classification"
    samples_class = Samples
    takes_given_images = True
    measures_faithfulness = True

    def __init__(self, options: TaskOptions):
        super().__init__(options)
        self._targets: torch.Tensor | None = None
        # One key per method: the same samples at each pass; maps without positive evidence
        # are left out of drift and energy, not counted as 0.
        self._tracker = DriftTracker(leave_out_empty=True, always_defined=True)
        self._inputs_logged = False

    @classmethod
    def recognises(cls, network: nn.Module, batch: Any) -> bool:
        return True

    @classmethod
    def samples_from_arrays(
        cls, images: Any, labels: Any = None, boxes: Any = None, masks: Any = None
    ) -> Samples:
        return make_samples(images, labels=labels, boxes=boxes, masks=masks)

    def parse_batch(self, batch: Any) -> Samples:
        parser = self.options.batch_parser or default_batch_parser
        return to_samples(parser(batch))

    def check_samples(self, samples: Samples) -> None:
        options = self.options
        check_samples(samples, options.target, options.mean, options.std)

    # ---------------------------------------------------------------- the pass

    def _target_spec(self, samples: Samples) -> object:
        target = self.options.target
        if self._targets is not None:
            return self._targets
        if _is_callable_target(target) or isinstance(target, torch.Tensor):
            return target
        if isinstance(target, int) and not isinstance(target, bool):
            return target
        if target == "label" or (target == "auto" and samples.labels is not None):
            return samples.labels
        return None  # the prediction, fixed after this first pass

    def _engine(self, network: nn.Module) -> CAMEngine:
        return CAMEngine(
            network,
            layer=self.layer_name,
            methods=self.options.methods,
            reshape=self.options.reshape,
        )

    def explain(self, network: nn.Module, samples: Samples) -> CAMResult:
        return self.explain_range(network, samples, 0, None)

    def explain_range(
        self, network: nn.Module, samples: Samples, start: int, stop: int | None
    ) -> CAMResult:
        # The fixed targets are one per sample of the whole set: slice them with the images.
        spec = self._target_spec(samples)
        if isinstance(spec, torch.Tensor):
            spec = spec[start:stop]
        result = self._engine(network).explain(samples.images[start:stop], targets=spec)
        self.layer_name = full_layer_name(network, result.layer)  # tags: the full name
        if result.scores.shape[1] != 1:
            raise ValueError(
                f"the target callable returned {result.scores.shape[1]} scores per image; "
                "GradCAMCallback tracks one fixed target per image, so return shape (B,) or (B, 1)"
            )
        return result

    def report_items(self, result: CAMResult, samples: Samples) -> list[ReportItem]:
        """One item per sample: its map for the fixed class, its box (when known) drawn."""
        options = self.options
        if self._targets is None and not _is_callable_target(options.target):
            self._targets = result.class_ids[:, 0].clone()
        maps = {m: result.maps[m][:, 0].float().cpu() for m in options.methods}
        # Evidence at the layer's resolution, after the ReLU, before normalising.
        evidence = {
            m: has_evidence(result.layer_maps[m][:, 0] if m in result.layer_maps else maps[m])
            for m in options.methods
        }
        texts = score_texts(result.class_ids[:, 0], result.scores[:, 0], options.class_names)
        items = []
        for index, picture in enumerate(self._pictures(samples)):
            box = None if samples.boxes is None else samples.boxes[index : index + 1]
            items.append(
                ReportItem(
                    tag=f"sample_{index:02d}",
                    picture=picture,
                    text=texts[index],
                    maps={m: maps[m][index] for m in options.methods},
                    evidence={m: bool(evidence[m][index]) for m in options.methods},
                    marks=None if box is None else partial(draw_boxes, boxes=box),
                )
            )
        return items

    def measure(
        self, method: str, items: list[ReportItem], samples: Samples, report: PassReport
    ) -> dict[str, float]:
        summary = self._tracker.update(
            method,
            torch.stack([item.maps[method] for item in items]),
            boxes=samples.boxes,
            masks=samples.masks,
            evidence=torch.tensor([item.evidence[method] for item in items]),
        )
        for name, values in self._tracker.last_per_image.items():
            report.per_image[f"{method}/{name}"] = values
        return summary

    def once_images(self, samples: Samples) -> list[tuple[str, np.ndarray, str | None]]:
        if self._inputs_logged:
            return []
        self._inputs_logged = True
        captions = None
        if samples.labels is not None:
            captions = [class_text(int(c), self.options.class_names) for c in samples.labels]
        sheet = inputs_sheet(
            self._pictures(samples), samples.boxes, captions, self.options.max_image_size
        )
        return [("inputs", sheet, None)]

    def monitored_scalars(self, samples: Samples) -> tuple[str, ...]:
        # Faithfulness scalars are left out: a pass whose maps are all flat has none.
        if samples.boxes is None and samples.masks is None:
            return ()
        names = ("energy_in_box", "pointing_game", "no_evidence_rate")
        return tuple(f"{method}/{name}" for method in self.options.methods for name in names)

    def faithfulness(
        self, network: nn.Module, samples: Samples, result: CAMResult
    ) -> dict[str, dict[str, float]]:
        if not self.options.faithfulness:
            return {}
        target = self.options.target
        probability = target if _is_callable_target(target) else None  # (B,) or (B, 1)
        engine = CAMEngine(network, layer=self.layer_name, methods=self.options.methods)
        measured = engine.faithfulness(
            samples.images, result, self.options.faithfulness, probability=probability
        )
        return mean_scalars(measured)

    # ---------------------------------------------------------------- pictures

    def _pictures(self, samples: Samples) -> list[np.ndarray]:
        options = self.options
        return [to_uint8_image(image, options.mean, options.std) for image in samples.images]

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "inputs_logged": self._inputs_logged,
            "targets": self._targets,
            # {method: (N, H, W)}: the tracker's first and previous maps
            **{k: v for k, v in self._tracker.state_dict().items() if k.endswith("_maps")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._inputs_logged = bool(state.get("inputs_logged", False))
        self._targets = state.get("targets")
        self._tracker.load_state_dict(
            {"first_maps": state.get("first_maps"), "prev_maps": state.get("prev_maps")}
        )
