"""The callback's trial pass: the one unlogged, unguarded pass before the first optimizer
step, so that a model, batch, output or target that cannot be explained fails at step 0; and
what it fixes, the tags a monitor can name (announced in one line)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.layers import unwrap_model
from ..core.resilience import run_in_chunks
from ..tasks import CAMTask
from .announce import announce
from .explained import ForwardWatch, not_callable_on_images

__all__ = ["TrialPass", "trial_pass"]


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


class TrialPass:
    """The trial pass, once per callback (:func:`trial_pass`), and the tags it fixes: the
    scalars the task logs at every pass from the first (``CAMTask.monitored_scalars``),
    under ``<tag_prefix>/<layer>/``, announced in one line through Lightning's logger (``announce``)."""

    def __init__(self) -> None:
        self.done = False
        self._tags: tuple[str, ...] | None = None

    def run(
        self, trainer: Any, task: CAMTask, network: nn.Module, samples: Any, tag_prefix: str
    ) -> None:
        """The trial on ``samples`` (a no-op once done), then the tags under
        ``<tag_prefix>/<layer>`` (the layer's full name is known once the trial ran) and the
        line."""
        if self.done:
            return
        trial_pass(task, network, samples)
        self.done = True
        prefix = f"{tag_prefix}/{task.layer_name}"
        self._tags = tuple(f"{prefix}/{tag}" for tag in task.monitored_scalars(samples))
        announce(trainer, task.name, task.layer_name, prefix, self._tags)

    @property
    def tags(self) -> tuple[str, ...]:
        if self._tags is None:
            raise RuntimeError(
                "GradCAMCallback.tags is known from fit start, once the task and layer are "
                "chosen (the line 'GradCAMCallback: ... task, layer ...' is logged then)"
            )
        return self._tags
