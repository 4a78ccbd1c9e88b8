"""Where ``GradCAMTrainerCallback`` finds its Trainer, its fixed samples and its writer."""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from ..lightning.sinks import FolderSink, Sink, TensorBoardSink

__all__ = ["calling_trainer", "eval_batch", "sink_for_trainer", "to_task_batch"]


def calling_trainer() -> Any | None:
    """The ``transformers.Trainer`` whose method is running up the call stack (callbacks are
    not handed the Trainer; ``on_train_begin`` is called from its training loop)."""
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer):
                return owner
            frame = frame.f_back
    finally:
        del frame
    return None


def eval_batch(trainer: Any, count: int) -> Any | None:
    """The first ``count`` items of the Trainer's ``eval_dataset`` (the first one when it is
    a dict of datasets), collated by its ``data_collator``: no sampler, no RNG drawn."""
    dataset = getattr(trainer, "eval_dataset", None)
    if isinstance(dataset, dict):
        dataset = next(iter(dataset.values()), None)
    if dataset is None:
        return None
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    if not items:
        return None
    return trainer.data_collator(items)


def to_task_batch(batch: Any) -> Any:
    """A Trainer batch ``{"pixel_values", "labels", ...}`` as the tasks read it: with
    ``labels`` ``(B, H, W)`` of class ids at the image size, the segmentation pair
    ``(pixel_values, labels)``; otherwise the dict itself (classification)."""
    if not isinstance(batch, dict) or "pixel_values" not in batch:
        return batch
    images, labels = batch["pixel_values"], batch.get("labels")
    if (
        isinstance(labels, torch.Tensor)
        and labels.dim() == 3
        and not labels.is_floating_point()
        and isinstance(images, torch.Tensor)
        and tuple(labels.shape) == (images.shape[0], *images.shape[-2:])
    ):
        return images, labels
    return {k: v for k, v in batch.items() if k in ("pixel_values", "labels", "boxes", "masks")}


def sink_for_trainer(trainer: Any | None, output_dir: str, subdir: str) -> tuple[Sink, str]:
    """The Trainer's own TensorBoard run (its ``TensorBoardCallback``'s writer, taken at
    the first write), else a PNG folder ``<output_dir>/<subdir>``; and where it writes."""
    from transformers.integrations import TensorBoardCallback

    callbacks = [] if trainer is None else trainer.callback_handler.callbacks
    board = next((c for c in callbacks if isinstance(c, TensorBoardCallback)), None)
    if board is not None:
        sink = TensorBoardSink(None)

        def writer() -> Any:
            if board.tb_writer is None:
                board._init_summary_writer(trainer.args)
            return board.tb_writer

        sink._get_writer = writer
        return sink, str(board.logging_dir)
    root = os.path.join(output_dir, subdir)
    return FolderSink(root), root
