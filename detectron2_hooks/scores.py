"""What ``score=`` may name: the scalar differentiated for each detection (no imports, so
that the config and the detection selection can both read it)."""

from __future__ import annotations

__all__ = ["SCORES", "check_score"]

#: What ``score=`` may name: the scalar differentiated for each detection.
SCORES = ("logit", "probability")


def check_score(score: str) -> str:
    """``score`` if it is one of :data:`SCORES`, else a ValueError that says what to pass."""
    if score not in SCORES:
        raise ValueError(
            f"score must be 'logit' (the detection's class logit, before the softmax or "
            f"sigmoid: Grad-CAM's y^c, does not saturate) or 'probability' (the score "
            f"detectron2 reports), got {score!r}"
        )
    return score
