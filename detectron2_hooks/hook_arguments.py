"""The checks of ``GradCAMHook``'s constructor arguments: each raises a ``ValueError`` that
says what was wrong and what to pass instead."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from detectron2.utils.events import EventWriter

__all__ = ["check_hook_arguments"]


def check_hook_arguments(
    inputs: Sequence[dict] | None,
    dataset: str | None,
    num_images: int,
    period: int,
    max_detections: int,
    max_image_size: int,
    filmstrip_columns: int,
    match_iou: float,
    tag_prefix: str,
    writers: Sequence[EventWriter],
    mapper: Callable[[dict], dict] | None,
) -> list[Any]:
    """Every argument checked, before any training time is spent; the writers as a list."""
    if (inputs is None) == (dataset is None):
        raise ValueError(
            "GradCAMHook needs exactly one image source: inputs=[detectron2 dicts] or "
            "dataset='registered_name' (with num_images=...)"
        )
    if inputs is not None and (isinstance(inputs, dict) or not len(inputs)):
        raise ValueError("inputs must be a non-empty list of detectron2 dicts")
    for name, value, low in (
        ("num_images", num_images, 1),
        ("period", period, 0),
        ("max_detections", max_detections, 1),
        ("max_image_size", max_image_size, 16),
        ("filmstrip_columns", filmstrip_columns, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0.0 < match_iou <= 1.0:
        raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
    if not isinstance(tag_prefix, str) or not tag_prefix.strip("/ "):
        raise ValueError(f"tag_prefix must be a non-empty string, got {tag_prefix!r}")
    writers = list(writers)
    for writer in writers:
        if not callable(getattr(writer, "write", None)):
            raise ValueError(
                "writers must be detectron2 event writers with a write() method (e.g. the "
                f"TensorboardXWriter of your PeriodicWriter), got {type(writer).__name__}"
            )
    if mapper is not None and not callable(mapper):
        raise ValueError(
            "mapper must be a callable dataset dict -> model input dict (e.g. "
            f"instantiate(cfg.dataloader.test.mapper)), got {type(mapper).__name__}"
        )
    return writers
