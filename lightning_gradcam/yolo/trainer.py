"""What ``GradCAMYOLOCallback`` reads from an Ultralytics trainer: the process's rank, the
model that was validated, the fixed samples of its validation set, and the TensorBoard
writer to log into."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..core.layers import unwrap_model
from ..core.state import preserve_rng

__all__ = ["is_main_process", "validated_model", "validation_batch", "TensorBoardWriter"]


def is_main_process() -> bool:
    """Whether this is the process that validates and writes: rank 0 of an Ultralytics DDP
    run (which re-launches the script, one worker per GPU), or a single process."""
    from ultralytics.utils import RANK

    return RANK in {-1, 0}


def validated_model(trainer: Any) -> nn.Module:
    """The model Ultralytics validates during training: the EMA when there is one."""
    ema = getattr(trainer, "ema", None)
    if ema is not None and getattr(ema, "ema", None) is not None:
        return ema.ema
    return unwrap_model(trainer.model)


def validation_batch(trainer: Any, count: int) -> dict[str, Any]:
    """The first ``count`` items of the trainer's validation set, collated as its loader
    collates them (letterboxed to the loader's own shapes).

    Read from the dataset, not by iterating the loader: Ultralytics' ``InfiniteDataLoader``
    keeps one iterator across epochs, so drawing a batch from it would shift every later
    validation. Its transforms draw from Python's ``random``: the RNG states are restored.
    """
    loader = getattr(trainer, "test_loader", None)
    dataset = getattr(loader, "dataset", None)
    if dataset is None or not len(dataset):
        raise ValueError(
            "GradCAMYOLOCallback takes its samples from the trainer's validation set, and "
            "this trainer has none; give model.train(...) a data YAML with a 'val' split"
        )
    with preserve_rng():
        items = [dataset[i] for i in range(min(count, len(dataset)))]
    return dataset.collate_fn(items)


class TensorBoardWriter:
    """The ``SummaryWriter`` the pictures and scalars go to, under the run's ``save_dir``:
    Ultralytics' own (``ultralytics.utils.callbacks.tensorboard.WRITER``, so its event
    files hold them too) when its TensorBoard callback is on, else one of ours, opened at
    the first write and closed by ``close``."""

    def __init__(self, log_dir: str):
        self.log_dir = str(log_dir)
        self._own = None

    @staticmethod
    def ultralytics_writer() -> Any | None:
        """Ultralytics' writer when its TensorBoard callback is logging this run."""
        from ultralytics.utils.callbacks import tensorboard

        return getattr(tensorboard, "WRITER", None)

    @property
    def shared(self) -> bool:
        """Whether Ultralytics' writer is used (it logs ``trainer.metrics`` itself)."""
        return self._own is None and self.ultralytics_writer() is not None

    def writer(self) -> Any:
        theirs = None if self._own is not None else self.ultralytics_writer()
        if theirs is not None:
            return theirs
        if self._own is None:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(self.log_dir, exist_ok=True)
            self._own = SummaryWriter(self.log_dir)
        return self._own

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None
