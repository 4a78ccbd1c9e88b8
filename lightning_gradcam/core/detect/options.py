"""The options every detection side takes, checked in one place before any forward:
``methods=`` (which maps), ``score=`` (which scalar), ``reshape=`` (an image-level layer's
layout) and ``choose=`` (which detections)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..layouts import Reshape, check_reshape
from ..methods import check_methods

__all__ = [
    "SCORES",
    "DetectionOptions",
    "check_choose",
    "check_options",
    "check_score",
    "chosen_rows",
]

#: What ``score=`` may name: the scalar differentiated for each detection.
SCORES = ("logit", "probability")


def check_score(score: str) -> str:
    """``score`` if it is one of :data:`SCORES`, else a ValueError that says what to pass.

    ``"logit"``: the detection's class logit, before the softmax or sigmoid (Grad-CAM's
    ``y^c``, Selvaraju et al., ICCV 2017; it does not saturate); ``"probability"``: the
    score the detector reports.
    """
    if score not in SCORES:
        raise ValueError(
            f"score must be 'logit' (the detection's class logit, before the softmax or "
            f"sigmoid: Grad-CAM's y^c, does not saturate) or 'probability' (the score "
            f"the detector reports), got {score!r}"
        )
    return score


Choose = Callable[[list], Sequence[Sequence[int]]]


def check_choose(choose: Choose | None) -> Choose | None:
    """``choose`` if it is None or callable, else a TypeError."""
    if choose is not None and not callable(choose):
        raise TypeError(
            "choose must be None (the first max_detections) or a callable mapping the "
            f"detector's outputs to output rows per image, got {type(choose).__name__}"
        )
    return choose


def chosen_rows(
    choose: Choose | None, outputs: list, counts: Sequence[int], max_detections: int | None
) -> list[list[int]]:
    """Per image, the output rows to explain: ``choose(outputs)``, else the first
    ``max_detections`` of ``counts[image]`` rows (outputs in the detector's order)."""
    if choose is None:
        return [list(range(count))[:max_detections] for count in counts]
    rows = [[int(r) for r in image_rows] for image_rows in choose(outputs)]
    if len(rows) != len(counts):
        raise ValueError(f"choose returned {len(rows)} lists for {len(counts)} images")
    for image, (image_rows, count) in enumerate(zip(rows, counts)):
        bad = [r for r in image_rows if not 0 <= r < count]
        if bad:
            raise ValueError(
                f"choose returned rows {bad} for image {image}, which has {count} detections"
            )
    return rows


@dataclass(frozen=True)
class DetectionOptions:
    """The checked options of a detection explainer (every side keeps one)."""

    methods: tuple[str, ...]
    score: str
    reshape: Reshape | None


def check_options(
    methods: str | Sequence[str], score: str = "logit", reshape: Reshape | None = None
) -> DetectionOptions:
    """``methods=``, ``score=`` and ``reshape=`` of a detection side, each checked with an
    error that says what to pass: methods from the registry but the guided ones (they need
    a backward to the input), ``score`` one of :data:`SCORES`, ``reshape`` None or a
    callable ``activation -> (N, C, h, w)``."""
    names = tuple(methods) if not isinstance(methods, str) else methods
    return DetectionOptions(
        methods=check_methods(names, detectors=True),
        score=check_score(score),
        reshape=check_reshape(reshape),
    )
