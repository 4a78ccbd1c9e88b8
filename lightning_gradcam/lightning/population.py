"""``GradCAMCallback(metrics_on="validation")``: the attention scalars over the whole
validation epoch, sharded across ranks like the validation loop itself.

During a validation epoch that the callback explains, every rank measures each of its own
validation batches (the first dataloader's; the first ``metrics_batches`` of them when
given) with the task's :class:`~lightning_gradcam.tasks.population.PopulationMeasure`,
adding sums; at the epoch's end one ``all_reduce`` gives the sums over every rank's images
and the means are logged under the tags the fixed samples' scalars have (those scalars are
then not logged from the fixed samples; pictures, drift and film strips still are).
Lightning's ``limit_val_batches`` and ``check_val_every_n_epoch`` decide which batches and
epochs there are; the callback's ``every_n_epochs`` which of those epochs are measured.

The measure needs no forward of its own: from the second batch measured on, a
``core.tap.ForwardTap`` opened before the user's ``validation_step`` takes the layer's
activation and the scores' gradient from that step's own forward (Lightning's ``fit``
validates under ``no_grad``), so a batch costs one backward from the scores to the layer,
the maps and the sums. When the step does not call the explained module on the batch's
images (it normalises them first, say), the measure runs its own forward, and says so once.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ..core.population import MetricSums
from ..core.tap import ForwardTap
from ..tasks import CAMTask
from ..tasks.population import (
    MAX_CLASSES,
    MEASURED_FIELDS,
    PopulationMeasure,
    measure_for,
)
from .announce import info_logger

__all__ = ["METRICS_ON", "SetSums", "ValidationMetrics", "check_metrics_on"]

METRICS_ON = ("samples", "validation")

#: The scalars a whole-epoch measure gives (the last part of their tags).
_FIELDS = (*MEASURED_FIELDS, "failed", "images")
_OWNED = {"energy_in_box", "energy_in_mask", "pointing_game", "no_evidence_rate", "found_rate"}


def check_metrics_on(
    metrics_on: object, metrics_batches: object, whole: str = "validation"
) -> tuple[str, int | None]:
    """``metrics_on`` and ``metrics_batches``, checked; a message saying what to pass.
    ``whole``: the word for the whole-set option (``"evaluation"`` for the HF Trainer)."""
    if metrics_on not in ("samples", whole):
        raise ValueError(
            f"metrics_on must be 'samples' (the scalars over the fixed samples) or "
            f"{whole!r} (over every {whole} batch), got {metrics_on!r}"
        )
    if metrics_batches is not None:
        if metrics_on != whole:
            raise ValueError(
                f"metrics_batches limits the batches measured with metrics_on={whole!r}; "
                f"pass metrics_on={whole!r} too, or leave metrics_batches=None"
            )
        if (
            isinstance(metrics_batches, bool)
            or not isinstance(metrics_batches, int)
            or metrics_batches < 1
        ):
            raise ValueError(
                f"metrics_batches must be a positive integer (batches per rank) or None (all "
                f"of them), got {metrics_batches!r}"
            )
    return metrics_on, metrics_batches


class ValidationMetrics:
    """The sums of one callback's validation epochs, on one rank (module docstring).

    The table has the same shape on every rank whatever the task (every task's fields), so
    a rank that saw no batch still joins the one ``all_reduce``.

    Attributes: ``images``: how many images the last logged means are over (all ranks).
    """

    def __init__(
        self,
        methods: tuple[str, ...],
        max_batches: int | None,
        on_error: str,
        owner: str = "GradCAMCallback: metrics_on='validation'",
    ):
        self.max_batches = max_batches
        self.on_error = on_error
        self.owner = owner  # who the warnings speak for
        self.images = 0
        self._measure: PopulationMeasure | None = None
        self._sums = MetricSums(methods, _FIELDS, MAX_CLASSES + 1)
        self._failed = False
        self._worked = False
        self._tap: ForwardTap | None = None
        self._told_own_forward = False

    def _for(self, task: CAMTask) -> PopulationMeasure:
        if self._measure is None or self._measure.task is not task:
            self._measure = measure_for(task)
        return self._measure

    def check(self, task: CAMTask, samples: Any) -> None:
        """Refuse, before training, validation batches like ``samples`` (the fixed samples
        parsed from them) that cannot be measured."""
        self._for(task).check(samples)

    def on_batch(
        self,
        trainer: Any,
        task: CAMTask,
        network: nn.Module,
        batch: Any,
        batch_idx: int,
        measured: bool,
    ) -> None:
        """A validation batch on this rank: its first batch of the sanity check is a trial
        (:meth:`trial`), a batch of an epoch the callback explains (``measured``) is added."""
        if trainer.sanity_checking:
            if batch_idx == 0:
                self.trial(task, network, batch)
        elif measured:
            skipped = self.batch(task, network, batch, batch_idx)
            if skipped is not None and not self._told_own_forward:
                self._told_own_forward = True
                info_logger(trainer)(
                    f"GradCAMCallback: metrics_on='validation' runs a forward of its own for "
                    f"validation batches: it could not reuse validation_step's ({skipped}). "
                    "It reuses it when validation_step calls the explained module on the "
                    "batch's images under fit's no_grad"
                )

    def trial(self, task: CAMTask, network: nn.Module, batch: Any) -> None:
        """Measure one batch and forget it (Lightning's sanity check): mistakes fail before
        training, with the measure's own message."""
        scratch = MetricSums(self._sums.methods, _FIELDS, MAX_CLASSES + 1)
        self._for(task).measure(network, batch, scratch)

    def start_batch(
        self,
        trainer: Any,
        task: CAMTask,
        network: nn.Module,
        batch: Any,
        batch_idx: int,
        measured: bool,
    ) -> None:
        """Before the user's ``validation_step`` of a batch that will be measured: open the
        measure's tap on it (``core.tap``), so the measure can reuse that step's forward
        instead of running its own (``fit`` validates under ``no_grad``; under
        ``inference_mode`` the tap stands aside)."""
        self.close_tap()
        if trainer.sanity_checking or not measured:
            return
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        try:
            tap = self._for(task).tap(network, batch)
        except Exception:  # a batch it cannot parse: the measure says so at the batch's end
            return
        if tap is not None:
            self._tap = tap.__enter__()

    def close_tap(self) -> ForwardTap | None:
        """Close the open tap, if one is open, and return it."""
        tap, self._tap = self._tap, None
        if tap is not None:
            tap.__exit__(None, None, None)
        return tap

    def abandon(self) -> None:
        """After an exception in the loop: the open tap's hooks come off the model (grad
        mode is left to the loop's own contexts, which have unwound)."""
        tap, self._tap = self._tap, None
        if tap is not None:
            tap.remove_hooks()

    def batch(self, task: CAMTask, network: nn.Module, batch: Any, batch_idx: int) -> str | None:
        """Add one validation batch's sums (past ``metrics_batches``: nothing); why the
        batch's tap could not reuse the validation forward, when it could not."""
        tap = self.close_tap()
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return None
        measure = self._for(task)
        try:
            images = measure.measure(network, batch, self._sums, tap)
        except Exception as error:
            if self.on_error == "raise" or not self._worked:
                raise  # the first batch measured: a mistake to fix, not a pass to skip
            self._failed = True
            warnings.warn(
                f"{self.owner} could not measure batch {batch_idx} ({type(error).__name__}: "
                f"{error}); the whole-set scalars of this evaluation are not logged",
                UserWarning,
                stacklevel=2,
            )
        else:
            self._worked = True
            self._sums.add(self._sums.methods[0], {"images": images})
        return None if tap is None else tap.skipped

    def finish(self, across_ranks: bool = True) -> dict[str, float] | None:
        """Every rank, at the end of a measured epoch: one ``all_reduce``, then the means
        (``{"<method>/<name>": value}``), or None when a rank failed or none measured.
        ``across_ranks=False``: this process measured the whole set, no collective."""
        self.close_tap()
        self._sums.add(self._sums.methods[0], {"failed": float(self._failed)})
        if across_ranks:
            self._sums.reduce()
        first = self._sums.totals(self._sums.methods[0])
        self.images = int(first["images"])
        means = None
        if self._measure is not None and not first["failed"] and self.images:
            means = self._measure.means(self._sums)
        self._sums.clear()
        self._failed = False
        return means

    @staticmethod
    def merge(scalars: dict[str, float], means: dict[str, float] | None) -> dict[str, float]:
        """The fixed samples' ``scalars`` with the whole-set ``means`` in place of theirs
        (``means=None``, as at the final pass after training: without them)."""
        kept = {k: v for k, v in scalars.items() if k.rsplit("/", 1)[-1] not in _OWNED}
        return kept | (means or {})


class SetSums:
    """The whole-set sums of a trainer adapter that measures a data set itself (the HF
    Trainer's ``hf.evaluation_set``, YOLO's ``yolo.validation_set``): on when ``metrics_on``
    is the adapter's whole-set word; one :class:`ValidationMetrics`, made with the task's
    methods at first use, whose warnings speak for ``owner``.

    Attributes: ``enabled``; ``images``: how many images the last means are over.
    """

    def __init__(
        self, metrics_on: str, whole: str, max_batches: int | None, on_error: str, owner: str
    ):
        self.enabled = metrics_on == whole
        self._max_batches, self._on_error, self._owner = max_batches, on_error, owner
        self._sums: ValidationMetrics | None = None

    @property
    def images(self) -> int:
        return 0 if self._sums is None else self._sums.images

    def _for(self, task: CAMTask) -> ValidationMetrics:
        if self._sums is None:
            self._sums = ValidationMetrics(
                task.options.methods, self._max_batches, self._on_error, owner=self._owner
            )
        return self._sums


class WholeSet:
    """``GradCAMCallback(metrics_on=...)``'s whole-set measurement across the validation
    epochs: off for ``"samples"``; for ``"validation"`` the sums (made with the task's
    methods, at the first batch), their reduction at each evaluation point and the means
    that replace the fixed samples' scalars.

    Attributes: ``enabled``; ``images``: how many images (all ranks) the last means are
    over; ``means``: those means until the pass has logged them.
    """

    def __init__(
        self, metrics_on: str, max_batches: int | None, on_error: str, every_n_epochs: int = 1
    ):
        self.enabled = metrics_on == "validation"
        self._max_batches, self._on_error = max_batches, on_error
        self._every_n_epochs = every_n_epochs
        self._sums: ValidationMetrics | None = None
        self.means: dict[str, float] | None = None

    @property
    def images(self) -> int:
        return 0 if self._sums is None else self._sums.images

    def _for(self, task: CAMTask) -> ValidationMetrics:
        if self._sums is None:
            self._sums = ValidationMetrics(task.options.methods, self._max_batches, self._on_error)
        return self._sums

    def before_step(
        self, trainer: Any, task: CAMTask, network: Any, batch: Any, index: int, evaluations: int
    ) -> None:
        """Every rank, before the user's ``validation_step`` of a batch of the epoch after
        ``evaluations`` evaluation points: open the measure's tap on the batch."""
        measured = (evaluations + 1) % self._every_n_epochs == 0
        self._for(task).start_batch(trainer, task, network, batch, index, measured)

    def on_batch(
        self, trainer: Any, task: CAMTask, network: Any, batch: Any, index: int, evaluations: int
    ) -> None:
        """Every rank, after ``validation_step``: add the batch when its epoch is measured
        (every ``every_n_epochs``-th evaluation point)."""
        measured = (evaluations + 1) % self._every_n_epochs == 0
        self._for(task).on_batch(trainer, task, network, batch, index, measured)

    def abandon(self) -> None:
        """After an exception in the loop: no hook of an open tap stays on the model."""
        if self._sums is not None:
            self._sums.abandon()

    def check(self, task: CAMTask, samples: Any) -> None:
        """Before training: refuse batches that carry nothing to measure against."""
        self._for(task).check(task, samples)

    def finish(self) -> None:
        """Every rank, at an evaluation point: the one ``all_reduce``, then the means."""
        if self._sums is not None:
            self.means = self._sums.finish() or {}

    def in_place_of_samples(self) -> dict[str, float] | None:
        """What the pass logs in place of the samples' scalars (``{}``: none, e.g. at the
        pass after training); ``None`` when off."""
        return (self.means or {}) if self.enabled else None
