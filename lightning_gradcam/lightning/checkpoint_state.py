"""What ``GradCAMCallback`` keeps in a Lightning checkpoint, and reads back on resume: the
counts, the task's name and layer, the fixed samples and the task's own state (fixed
targets, drift references), under a version number."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .batch import FixedSamples

__all__ = ["STATE_VERSION", "callback_state", "restore_callback_state"]

STATE_VERSION = 1


def callback_state(
    fixed: FixedSamples, layer: str | None, eval_count: int, cam_count: int
) -> dict[str, Any]:
    """The callback's ``state_dict()``: tensors, lists and numbers only."""
    samples, task = fixed.samples, fixed.task
    return {
        "version": STATE_VERSION,
        "task": None if task is None else task.name,
        "layer": layer,
        "eval_count": eval_count,
        "cam_count": cam_count,
        "images_digest": None if samples is None else samples.digest(),
        "samples": None if samples is None else samples.to_state(),
        **({} if task is None else task.state_dict()),
    }


def restore_callback_state(
    fixed: FixedSamples, state: dict[str, Any], warn: Callable[[str, str], None]
) -> tuple[int, int] | None:
    """Read ``callback_state``'s output back into ``fixed`` (samples, task, drift); the
    ``(eval_count, cam_count)`` it held, or ``None`` (with a warning: drift restarts) for
    a state of another version."""
    if state.get("version") != STATE_VERSION:
        warn(
            "state_version",
            f"GradCAMCallback: ignoring checkpoint state of version "
            f"{state.get('version')!r} (expected {STATE_VERSION}); drift restarts",
        )
        return None
    if state["samples"] is not None and fixed.restore(state, warn):
        fixed.task.layer_name = state["layer"] or fixed.task.layer_name
        fixed.task.load_state_dict(state)
    return int(state["eval_count"]), int(state["cam_count"])
