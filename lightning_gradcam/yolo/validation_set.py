"""``GradCAMYOLOCallback(metrics_on="validation")``: the attention scalars over every image of
the trainer's validation set, at each explained epoch.

Ultralytics calls ``on_val_end`` on rank 0 only, so rank 0 measures every image of the
validation set itself, with no collective call. (Under DDP, the other ranks wait for it at
Ultralytics' own end-of-epoch broadcast.) The images are read from the validation dataset,
not drawn from its loader: Ultralytics' ``InfiniteDataLoader`` keeps one iterator across
epochs, and drawing from it would shift every later validation. They are read in the loader's
batch size, in its order, so that each batch keeps the letterbox shape the validator gave it,
and collated by the dataset's own ``collate_fn``. Each batch is measured with the detection
task's :class:`~lightning_gradcam.tasks.population.DetectionMeasure`, the same measure
``GradCAMCallback(metrics_on="validation")`` uses. Per ground-truth object, the measure takes
the detection that finds it::

    energy_in_box = sum share / n,  pointing_game = sum hit / n   (missed: 0)
    found_rate = f / n,  no_evidence_rate = #(found without evidence) / f   (1 when f = 0)

The means replace the fixed samples' own values of those four scalars. Drift, pictures and
film strips stay on the fixed samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from ..core.state import preserve_rng
from ..lightning.population import SetSums
from ..tasks import CAMTask

__all__ = ["ValidationSet"]

_OWNER = "GradCAMYOLOCallback(metrics_on='validation')"


def validation_batches(trainer: Any, max_batches: int | None) -> Iterator[dict[str, Any]]:
    """The trainer's validation set in its loader's batches, read from the dataset (module
    docstring); the first ``max_batches`` of them when given."""
    loader = getattr(trainer, "test_loader", None)
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise ValueError(
            f"{_OWNER} measures the trainer's validation set, and this trainer has none; give "
            "model.train(...) a data YAML with a 'val' split, or use metrics_on='samples'"
        )
    size = int(getattr(loader, "batch_size", None) or 1)
    for index, start in enumerate(range(0, len(dataset), size)):
        if max_batches is not None and index >= max_batches:
            return
        items = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
        yield dataset.collate_fn(items)


class ValidationSet(SetSums):
    """The whole-set sums of one ``GradCAMYOLOCallback`` on rank 0: off for
    ``metrics_on="samples"``; for ``"validation"``, a trial before the first epoch and the
    means at each explained epoch (module docstring).

    Attributes: ``enabled``; ``images``: how many images the last means are over.
    """

    def __init__(self, metrics_on: str, max_batches: int | None, on_error: str):
        super().__init__(metrics_on, "validation", max_batches, on_error, _OWNER)

    def trial(self, trainer: Any, task: CAMTask, network: nn.Module) -> None:
        """Before the first epoch: measure the first validation batch and forget it, so
        that a set the measure cannot take fails now, with what to change."""
        self._sums = None
        if not self.enabled:
            return
        with preserve_rng():
            batch = next(validation_batches(trainer, 1), None)
            if batch is None:
                raise ValueError(
                    f"{_OWNER}: the trainer's validation set is empty; give it images, or "
                    "use metrics_on='samples'"
                )
            try:
                self._for(task).trial(task, network, batch)
            except ValueError as error:
                raise ValueError(f"{_OWNER}: {error}") from error

    def means(self, trainer: Any, task: CAMTask, network: nn.Module) -> dict[str, float] | None:
        """The means over the validation set (``{"<method>/<name>": value}``), or None when a
        batch could not be measured (one warning)."""
        sums = self._for(task)
        with preserve_rng():  # the dataset's transforms draw from Python's random
            for index, batch in enumerate(validation_batches(trainer, self._max_batches)):
                sums.batch(task, network, batch, index)
        return sums.finish(across_ranks=False)
