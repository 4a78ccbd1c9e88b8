"""One logged CAM pass of ``GradCAMCallback``: compute (in chunks when memory runs short),
let the task draw and measure, write to the sinks, check the alarm, keep the history. A
failure is a one-line warning and a ``skipped_passes`` mark (``core.resilience.PassGuard``),
never the end of the run unless ``on_error="raise"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..core.resilience import PassGuard
from ..tasks import CAMTask, PassReport
from .metrics import AlarmWatch
from .population import ValidationMetrics
from .sinks import Sink

__all__ = ["LoggedPass"]


class LoggedPass:
    """Runs and logs the passes of one fit (``GradCAMCallback`` makes one per fit).

    Args:
        on_error: ``"warn"`` or ``"raise"`` (``PassGuard``).
        alarm: the floors watched after each pass.
        history: the list each pass appends ``{"epoch", "step", "scalars"}`` to (the
            callback's ``history``, kept across fits).
    """

    def __init__(self, on_error: str, alarm: AlarmWatch, history: list[dict[str, Any]]):
        self._guard = PassGuard("GradCAMCallback", on_error)
        self._alarm = alarm
        self.history = history
        self.passes_logged = 0

    def run(
        self,
        task: CAMTask,
        network: Callable[[], nn.Module],
        samples: Any,
        sink: Sink,
        prefix: str,
        step: int,
        epoch: int,
        whole_set: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """One guarded pass at ``step``; the scalars logged (``{}`` when it failed).
        ``whole_set``: means over the validation epoch, logged in place of the samples'
        (``population.ValidationMetrics.merge``), and alone when the pass failed: a
        monitored whole-set scalar never vanishes because the pictures' pass did."""
        logged: dict[str, float] = {}

        def log(result: Any) -> None:
            logged.update(
                self._log(task, network(), samples, result, sink, prefix, step, epoch, whole_set)
            )

        outcome = self._guard.run_chunked(
            f"the CAM pass at step {step}",
            lambda start, stop: task.explain_range(network(), samples, start, stop),
            len(samples),
            merge=task.combine,
            then=log,
        )
        if outcome.ran and not outcome.ok:
            self._mark_skipped(sink, prefix, step)
        if not outcome.ok:
            return self.log_scalars(sink, prefix, whole_set, step) if whole_set else {}
        return logged

    @staticmethod
    def log_scalars(
        sink: Sink, prefix: str, scalars: dict[str, float], step: int
    ) -> dict[str, float]:
        """Write ``scalars`` (tags relative to ``prefix``) and flush; the full tags written."""
        tagged = {f"{prefix}/{tag}": value for tag, value in scalars.items()}
        for tag, value in tagged.items():
            sink.scalar(tag, value, step)
        sink.flush()
        return tagged

    def _mark_skipped(self, sink: Sink, prefix: str, step: int) -> None:
        try:  # the sink itself may be what failed
            sink.scalar(f"{prefix}/skipped_passes", float(self._guard.failed_passes), step)
            sink.flush()
        except Exception:
            pass

    def _log(
        self,
        task: CAMTask,
        network: nn.Module,
        samples: Any,
        result: Any,
        sink: Sink,
        prefix: str,
        step: int,
        epoch: int,
        whole_set: dict[str, float] | None,
    ) -> dict[str, float]:
        report: PassReport = task.report(result, samples, step, epoch)
        for method, values in task.faithfulness(network, samples, result).items():
            report.summary.setdefault(method, {}).update(values)
            report.scalars.update({f"{method}/{k}": v for k, v in values.items()})
        if whole_set is not None:
            report.scalars = ValidationMetrics.merge(report.scalars, whole_set)
        for tag, image, caption in report.images:
            sink.image(f"{prefix}/{tag}", image, step, caption=caption)
        scalars = self.log_scalars(sink, prefix, report.scalars, step)
        self.passes_logged += 1
        self.history.append({"epoch": epoch, "step": step, "scalars": report.summary})
        self._alarm.check(report, epoch, prefix)
        return scalars
