"""The callback's trial pass: the one unlogged, unguarded pass before the first optimizer
step, so that a model, batch, output or target that cannot be explained fails at step 0."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.layers import unwrap_model
from ..core.resilience import run_in_chunks
from ..tasks import CAMTask
from .explained import ForwardWatch, not_callable_on_images

__all__ = ["trial_pass"]


def trial_pass(task: CAMTask, network: nn.Module, samples: Any) -> None:
    """``task`` explains ``samples`` once (in chunks on out-of-memory), nothing logged.

    An error raised inside the module's own forward means the module cannot take the
    samples: it becomes a ``TypeError`` saying to pass ``model=``, ``target=`` or ``task=``.
    Any other error goes through with a note that the trial pass before training failed."""
    try:
        with ForwardWatch(unwrap_model(network)) as watch:
            run_in_chunks(
                lambda start, stop: task.explain_range(network, samples, start, stop),
                len(samples),
                task.combine,
            )
    except Exception as error:
        if watch.failed_inside(error):
            raise not_callable_on_images(network, samples, task.name, error) from error
        if hasattr(error, "add_note"):  # Python 3.11+
            error.add_note(
                "GradCAMCallback: the trial CAM pass before training failed; fix the "
                "callback's layer/target/model/task (or the model's output) before training."
            )
        raise
