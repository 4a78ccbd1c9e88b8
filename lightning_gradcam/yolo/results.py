"""The callback's scalars as columns of Ultralytics' ``results.csv``.

Ultralytics writes a row of ``results.csv`` (``BaseTrainer.save_metrics``) right after
``validate()`` returns and before ``on_fit_epoch_end``, from ``{**train losses,
**trainer.metrics, **trainer.lr}``; ``trainer.metrics`` is replaced by ``validate()``'s
return value, so nothing a callback puts there during validation survives. The one event
between validation and that row is the validator's ``on_val_end`` (the validator shares the
trainer's callbacks): the scalars computed there ride in ``trainer.lr`` (a dict made afresh
each epoch, "for loggers", that every logger has already read at ``on_train_epoch_end``) until
``on_fit_epoch_end``, which takes them out again and puts them in ``trainer.metrics`` for the
loggers that read it there (Ultralytics' TensorBoard, MLflow, W&B callbacks).

The header of ``results.csv`` is written once, with the first row, so the columns are fixed
at the first pass: every scalar the task can give, a row without a value (drift at the first
pass, an epoch not explained, a failed pass) holding ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ResultsColumns", "SCALARS"]

#: Every scalar the detection task gives per method, in the order of the columns.
SCALARS = (
    "energy_in_box",
    "pointing_game",
    "found_rate",
    "no_evidence_rate",
    "drift_vs_prev",
    "drift_vs_first",
)


class ResultsColumns:
    """Fixed ``results.csv`` columns, lent to ``trainer.lr`` for the row being written."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self._lent: tuple[str, ...] = ()

    def declare(self, prefix: str, methods: Iterable[str]) -> None:
        """The columns ``<prefix>/<method>/<scalar>`` for every method and scalar."""
        self.names = tuple(f"{prefix}/{m}/{s}" for m in methods for s in SCALARS)

    def row(self, scalars: Mapping[str, float]) -> dict[str, float]:
        """``scalars`` on the declared columns, ``nan`` where there is no value."""
        return {name: float(scalars.get(name, math.nan)) for name in self.names}

    def lend(self, trainer: Any, scalars: Mapping[str, float]) -> None:
        """Put this epoch's row in ``trainer.lr`` (module docstring)."""
        lr = getattr(trainer, "lr", None)
        if not isinstance(lr, dict) or not self.names:
            return
        added = {k: v for k, v in self.row(scalars).items() if k not in lr or k in self._lent}
        lr.update(added)
        self._lent = tuple(added)

    def give_back(self, trainer: Any) -> None:
        """Take the lent columns out of ``trainer.lr`` again."""
        lr = getattr(trainer, "lr", None)
        if isinstance(lr, dict):
            for name in self._lent:
                lr.pop(name, None)
        self._lent = ()
