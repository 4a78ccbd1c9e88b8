"""The options every detection side takes: ``score=`` (which scalar) and ``choose=`` (which
detections)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["SCORES", "check_score", "check_choose", "chosen_rows"]

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
