"""Which side explains a detector: a registry of (recognise, build) pairs, so that
``DetectionCAM(model)`` reaches a framework's own side (Ultralytics YOLO) without the
torchvision side importing it (an optional, lazily imported framework)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register_detector_side", "detector_side"]

_SIDES: list[tuple[Callable[[Any], bool], Callable[..., Any]]] = []


def register_detector_side(recognise: Callable[[Any], bool], build: Callable[..., Any]) -> None:
    """``build(model, *args, **kwargs)`` explains the models ``recognise(model)`` is True for;
    ``recognise`` must not import the framework."""
    if all(r is not recognise for r, _ in _SIDES):
        _SIDES.append((recognise, build))


def detector_side(model: Any) -> Callable[..., Any] | None:
    """The ``build`` of the first side that recognises ``model``, or None (torchvision's)."""
    for recognise, build in _SIDES:
        if recognise(model):
            return build
    return None
