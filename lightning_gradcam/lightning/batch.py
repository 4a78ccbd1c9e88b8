"""Gather the fixed samples from the batches the callback is shown, whatever the task."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..core.state import preserve_rng
from ..tasks.base import CAMTask, TaskSamples

__all__ = ["FixedSamples", "SampleCollector", "first_loader"]


def first_loader(loaders: object) -> object | None:
    """The first validation dataloader of ``trainer.val_dataloaders`` (one, a list or a dict)."""
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


class SampleCollector:
    """Gathers the first ``count`` samples of the batches it is shown, each parsed by
    ``parse`` (a task's ``parse_batch``) into the task's samples."""

    def __init__(self, count: int):
        self.count = count
        self._parts: list[TaskSamples] = []

    @property
    def wants_more(self) -> bool:
        return sum(len(part) for part in self._parts) < self.count

    def add(self, batch: object, parse: Callable[[Any], TaskSamples]) -> None:
        if self.wants_more:
            self._parts.append(parse(batch))

    def add_from(self, batches: Iterable[object], parse: Callable[[Any], TaskSamples]) -> None:
        """Batches from ``batches`` (a dataloader) until enough samples are gathered."""
        for batch in batches:
            self.add(batch, parse)
            if not self.wants_more:
                break

    def collect(self) -> TaskSamples | None:
        """The first ``count`` samples gathered so far (None if none), and start afresh."""
        parts, self._parts = self._parts, []
        return type(parts[0]).concat(parts).head(self.count) if parts else None


class FixedSamples:
    """The task and the fixed samples it explains: the user's images (classification), else
    the first ``num_samples`` of the batches shown, parsed by the task chosen at the first
    batch (``CallbackArguments.make_task``)."""

    def __init__(self, args: Any):
        self.args = args
        self.task: CAMTask | None = None
        self.samples: TaskSamples | None = None
        self.user_given = args.user_images is not None
        self._collector = SampleCollector(args.num_samples)
        if self.user_given:
            self.task = args.make_task(None, None)
            self.set(args.user_images.head(args.num_samples))

    def set(self, samples: TaskSamples) -> None:
        """Keep ``samples``, checked against the callback's arguments."""
        self.task.check_samples(samples)
        self.samples = samples

    def task_for(self, network: nn.Module, batch: object) -> CAMTask:
        if self.task is None:
            self.task = self.args.make_task(network, batch)
        return self.task

    def take(self, network: nn.Module, batch: object) -> None:
        """Add ``batch``'s samples while more are wanted."""
        if self.samples is None and self._collector.wants_more:
            self._collector.add(batch, self.task_for(network, batch).parse_batch)
            if not self._collector.wants_more:
                self.finish()

    def take_from(self, network: nn.Module, loader: Iterable[object]) -> None:
        """Batches of ``loader`` until enough samples are gathered; a fresh iterator draws a
        seed, so the run's random streams are left as they were."""
        with preserve_rng():
            for batch in loader:
                self.take(network, batch)
                if self.samples is not None:
                    break
        self.finish()

    def take_validation(self, network: nn.Module, val_dataloaders: Any) -> None:
        """No sanity check ran: the samples from the first validation loader, now (no-op
        when known, or without a loader: the first training batch's are used then)."""
        if self.samples is None:
            loader = first_loader(val_dataloaders)
            if loader is not None:
                self.take_from(network, loader)

    def take_training(self, network: nn.Module, batch: object) -> None:
        """Without a validation loop: the samples from the first training batch."""
        if self.samples is None:
            self.take(network, batch)
            self.finish()

    def trial_samples_from_training(
        self, network: nn.Module, batch: object, validation: bool, trial_done: bool, count: int
    ) -> TaskSamples | None:
        """A training batch (rank zero): the samples a trial pass not yet run can take, or
        None. Without a validation loop the fixed samples are the first training batch's;
        with one whose samples are not known yet, the batch's first ``count`` stand in."""
        if not validation:
            self.take_training(network, batch)
            return self.samples
        if trial_done or self.samples is not None:
            return None
        return self.task_for(network, batch).parse_batch(batch).head(count)

    def finish(self) -> None:
        """The samples gathered so far become the fixed ones (if none are yet)."""
        samples = self._collector.collect()
        if samples is not None and self.samples is None:
            self.set(samples)

    def restore(self, state: dict[str, Any], warn: Callable[[str, str], None]) -> bool:
        """The samples of a checkpoint's ``state`` (and its task), unless the user passed
        other images now (one warning; the drift series restarts): whether restored."""
        if self.user_given:
            if self.samples.digest() != state["images_digest"]:
                warn(
                    "other_images",
                    "GradCAMCallback: the images passed now differ from those in the "
                    "checkpoint; the drift series restarts from these images",
                )
                return False
        else:
            self.task = self.args.make_task(None, None, name=state.get("task"))
            self.set(self.task.samples_from_state(state["samples"]))
        return True
