"""The callback's scalars as training signals: ``trainer.callback_metrics`` (what
``ModelCheckpoint`` and ``EarlyStopping`` monitor) and the optional alarm on a floor."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..tasks import PassReport

__all__ = ["AlarmWatch", "publish_metrics"]


def publish_metrics(trainer: Any, scalars: dict[str, float]) -> None:
    """Put ``scalars`` ``{tag: value}`` into ``trainer.callback_metrics`` on every rank.

    Only global rank zero computes a pass; under DDP its values are broadcast (every rank
    calls this at the same validation-epoch end, so the broadcast cannot wait on a rank that
    never comes), so a monitor sees the same value on every rank and no rank stops alone."""
    if getattr(trainer, "world_size", 1) > 1:
        scalars = trainer.strategy.broadcast(scalars, src=0)
    metrics = trainer.callback_metrics
    for tag, value in scalars.items():
        metrics[tag] = torch.tensor(float(value))


class AlarmWatch:
    """Warn once per scalar when a pass's mean falls below its floor.

    ``floors``: ``{name: floor}``; a bare name (``energy_in_box``) applies to every method,
    ``gradcam/energy_in_box`` to one. Quiet before epoch ``after_epoch``. The warning names
    the samples whose own value is below the floor (``PassReport.per_image``)."""

    def __init__(self, floors: dict[str, float], after_epoch: int = 0):
        self.floors = floors
        self.after_epoch = after_epoch
        self._raised: set[str] = set()

    def _floor(self, tag: str) -> float | None:
        if tag in self.floors:
            return self.floors[tag]
        return self.floors.get(tag.rsplit("/", 1)[-1])

    def check(self, report: PassReport, epoch: int, prefix: str) -> None:
        if not self.floors or epoch < self.after_epoch:
            return
        for tag, value in report.scalars.items():
            floor = self._floor(tag)
            if floor is None or value >= floor or tag in self._raised:
                continue
            self._raised.add(tag)
            values = report.per_image.get(tag, [])
            low = [f"{i} ({v:.2f})" for i, v in enumerate(values) if v is not None and v < floor]
            which = f"; samples below it: {', '.join(low)}" if low else ""
            warnings.warn(
                f"GradCAMCallback alarm: {prefix}/{tag} = {value:.3f} at epoch {epoch} is "
                f"below its floor {floor}{which}. The model may be deciding from something "
                "other than the object (a background, a mark, a border): look at the "
                f"overlays under {prefix}/",
                UserWarning,
                stacklevel=2,
            )
