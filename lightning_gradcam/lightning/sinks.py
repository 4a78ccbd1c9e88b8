"""Where the callback's pictures and numbers go: every logger of the trainer that can take them.

One interface (``Sink``: ``image``, ``scalar``, ``flush``) and one sink per destination:

- ``TensorBoardSink``: a ``SummaryWriter`` (Lightning's ``TensorBoardLogger.experiment``);
- ``WandbSink``: Lightning's ``WandbLogger``: images as ``wandb.Image`` (with a caption) and
  scalars in one ``log_metrics`` call per step, plotted against ``trainer/global_step``;
- ``MLflowSink``: Lightning's ``MLFlowLogger``: images by ``MlflowClient.log_image(run_id,
  image, key=..., step=...)``, scalars as metrics at the step;
- ``FolderSink``: PNG files and ``scalars.csv`` in a folder (a ``CSVLogger``'s, or the fallback);
- ``NullSink``: nothing at all (``fast_dev_run``, ``DummyLogger``);
- ``FanOutSink``: several of the above at once.

``sinks_for(loggers, fallback_dir)`` picks them for a trainer's loggers. ``wandb`` and
``mlflow`` are optional: nothing here imports them unless such a logger is attached.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import cv2
import numpy as np

from .compat import (
    csv_logger_types,
    dummy_logger_types,
    mlflow_logger_types,
    tensorboard_logger_types,
    wandb_logger_types,
)

__all__ = [
    "Sink",
    "TensorBoardSink",
    "WandbSink",
    "MLflowSink",
    "FolderSink",
    "NullSink",
    "FanOutSink",
    "mlflow_key",
    "sinks_for",
    "trainer_sinks",
]


class Sink(Protocol):
    """What the callback writes to. ``image``: ``uint8 (H, W, 3)`` RGB; ``caption``: a short
    text shown next to the picture where the destination has a place for one (W&B)."""

    def image(self, tag: str, image: np.ndarray, step: int, caption: str | None = None) -> None: ...

    def scalar(self, tag: str, value: float, step: int) -> None: ...

    def flush(self) -> None:
        """Make everything given so far visible (sinks that batch per step write it now)."""
        ...


class TensorBoardSink:
    """Writes through a ``SummaryWriter`` (a Lightning ``TensorBoardLogger.experiment``).

    ``TensorBoardSink(writer)`` uses ``writer``; ``TensorBoardSink.for_logger(logger)`` takes
    ``logger.experiment`` at the first write, so a sink made on every rank creates the
    event file on the rank that writes only.
    """

    def __init__(self, writer: object):
        self._writer = writer
        self._get_writer: Callable[[], object] | None = None

    @classmethod
    def for_logger(cls, logger: Any) -> TensorBoardSink:
        sink = cls(None)
        sink._get_writer = lambda: logger.experiment
        return sink

    @property
    def writer(self) -> object:
        if self._writer is None and self._get_writer is not None:
            self._writer = self._get_writer()
        return self._writer

    def image(self, tag: str, image: np.ndarray, step: int, caption: str | None = None) -> None:
        """``image``: ``uint8 (H, W, 3)`` RGB. TensorBoard has no caption field: the caption
        is ignored (the callback's pictures carry theirs drawn in)."""
        self.writer.add_image(tag, image, global_step=step, dataformats="HWC")

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        if self._writer is None:
            return  # nothing was written
        flush = getattr(self._writer, "flush", None)
        if callable(flush):
            flush()


class _PerStepBatch:
    """Collects ``{key: value}`` for one step; hands the batch over when the step changes or
    on ``flush``, so that a CAM pass is one row / one request rather than one per picture."""

    def __init__(self, send: Callable[[dict[str, Any], int], None]):
        self._send = send
        self._step: int | None = None
        self._items: dict[str, Any] = {}

    def add(self, key: str, value: Any, step: int) -> None:
        if self._step is not None and step != self._step:
            self.flush()
        self._step = step
        self._items[key] = value

    def flush(self) -> None:
        if self._items:
            items, step = self._items, self._step
            self._items, self._step = {}, None
            self._send(items, step)


class WandbSink:
    """Lightning's ``WandbLogger``: each step's pictures (``wandb.Image`` with a caption) and
    scalars go in one ``logger.log_metrics(..., step)`` call at ``flush`` (or when the step
    changes), so W&B plots them against ``trainer/global_step`` like the trainer's metrics.

    A picture without a caption gets ``"<last tag part>, step <step>"``.
    """

    def __init__(self, logger: Any):
        try:
            import wandb
        except ImportError as error:  # WandbLogger itself needs wandb; kept for clarity
            raise ImportError(
                "a WandbLogger is attached but wandb is not installed: "
                "pip install 'lightning-gradcam[wandb]'"
            ) from error
        self._wandb = wandb
        self.logger = logger
        self._batch = _PerStepBatch(lambda items, step: self.logger.log_metrics(items, step=step))

    def image(self, tag: str, image: np.ndarray, step: int, caption: str | None = None) -> None:
        if caption is None:
            caption = f"{tag.rsplit('/', 1)[-1]}, step {step}"
        self._batch.add(tag, self._wandb.Image(np.ascontiguousarray(image), caption=caption), step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._batch.add(tag, float(value), step)

    def flush(self) -> None:
        self._batch.flush()


# MLflow names allow alphanumerics, "_", "-", ".", " " and "/" only (metric names and
# log_image keys alike). "+" (gradcam++) is spelled out, so that gradcam and gradcam++ stay
# two series; anything else becomes "_".
_MLFLOW_BAD = re.compile(r"[^a-zA-Z0-9_\-./ ]")


def mlflow_key(tag: str) -> str:
    """``tag`` as a valid MLflow metric name / image key: ``"+"`` -> ``"_plus"``, any other
    character MLflow refuses -> ``"_"`` (``"gradcam/layer4/gradcam++/grid"`` ->
    ``"gradcam/layer4/gradcam_plus_plus/grid"``)."""
    return _MLFLOW_BAD.sub("_", tag.replace("+", "_plus"))


class MLflowSink:
    """Lightning's ``MLFlowLogger``: pictures by ``MlflowClient.log_image(run_id, image,
    key=..., step=...)`` (MLflow >= 2.12 shows them per step in the run's Artifacts/Images),
    scalars as metrics at the step (one ``log_metrics`` batch per step, at ``flush``).

    Tags are made valid MLflow names by ``mlflow_key``; two tags that would become the same
    name are refused with an error rather than merged into one series.
    """

    def __init__(self, logger: Any):
        self.logger = logger
        self._names: dict[str, str] = {}
        self._batch = _PerStepBatch(lambda items, step: self.logger.log_metrics(items, step=step))

    def _key(self, tag: str) -> str:
        key = mlflow_key(tag)
        other = self._names.setdefault(key, tag)
        if other != tag:
            raise ValueError(
                f"the tags {other!r} and {tag!r} both become the MLflow name {key!r}; "
                "use method names and a tag_prefix made of letters, digits, '_', '-', '.'"
            )
        return key

    def image(self, tag: str, image: np.ndarray, step: int, caption: str | None = None) -> None:
        """MLflow images have no caption field: ``caption`` is ignored."""
        client = self.logger.experiment  # MlflowClient
        client.log_image(
            self.logger.run_id, np.ascontiguousarray(image), key=self._key(tag), step=step
        )

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._batch.add(self._key(tag), float(value), step)

    def flush(self) -> None:
        self._batch.flush()


class FolderSink:
    """PNG files and a CSV: ``<root>/<tag>/step_<step>.png`` per image, and every scalar as a
    row ``tag,step,value`` of ``<root>/scalars.csv``."""

    def __init__(self, root: str):
        self.root = root

    def image(self, tag: str, image: np.ndarray, step: int, caption: str | None = None) -> None:
        folder = os.path.join(self.root, *tag.split("/"))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{step:07d}.png")
        if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")

    def scalar(self, tag: str, value: float, step: int) -> None:
        os.makedirs(self.root, exist_ok=True)
        path = os.path.join(self.root, "scalars.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["tag", "step", "value"])
            writer.writerow([tag, step, f"{value:.6g}"])

    def flush(self) -> None:
        pass


class NullSink:
    """Writes nothing: for ``fast_dev_run`` (Lightning's ``DummyLogger``), a dry run."""

    def image(self, tag: str, image: np.ndarray, step: int, caption: str | None = None) -> None:
        pass

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def flush(self) -> None:
        pass


class FanOutSink:
    """Several sinks at once. Every sink gets every call even when another fails; the first
    failure is raised afterwards (so one broken logger does not starve the others)."""

    def __init__(self, sinks: Sequence[Sink]):
        self.sinks = tuple(sinks)

    def _each(self, call: Callable[[Sink], None]) -> None:
        first: Exception | None = None
        for sink in self.sinks:
            try:
                call(sink)
            except Exception as error:
                first = first or error
        if first is not None:
            raise first

    def image(self, tag: str, image: np.ndarray, step: int, caption: str | None = None) -> None:
        self._each(lambda sink: sink.image(tag, image, step, caption))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._each(lambda sink: sink.scalar(tag, value, step))

    def flush(self) -> None:
        self._each(lambda sink: sink.flush())


def trainer_sinks(trainer: Any, subdir: str, warn: Callable[[str], None]) -> Sink:
    """:func:`sinks_for` a Lightning ``trainer``: its loggers, its ``log_dir`` (or
    ``default_root_dir``) as the fallback, nothing written under ``fast_dev_run``; ``warn``
    is called on global rank zero only. ``trainer.log_dir`` broadcasts under DDP: call this
    where every rank runs."""
    zero = trainer.is_global_zero
    return sinks_for(
        trainer.loggers,
        trainer.log_dir or trainer.default_root_dir,
        subdir=subdir,
        dry_run=bool(trainer.fast_dev_run),
        warn=warn if zero else lambda _message: None,
    )


def sinks_for(
    loggers: Iterable[Any],
    fallback_dir: str,
    subdir: str = "gradcam",
    dry_run: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Sink:
    """One sink that writes to every logger in ``loggers`` (a trainer's ``trainer.loggers``)
    that can take pictures.

    ``TensorBoardLogger`` -> ``TensorBoardSink``; ``WandbLogger`` -> ``WandbSink``;
    ``MLFlowLogger`` -> ``MLflowSink``; ``CSVLogger`` -> ``FolderSink(<its log_dir>/<subdir>)``;
    several -> ``FanOutSink``. Loggers of other kinds are passed over.

    With ``dry_run`` (``trainer.fast_dev_run``), or when every logger is a ``DummyLogger``
    (what ``fast_dev_run`` puts in place of the user's), a ``NullSink``: nothing written,
    nothing said. When no logger can take pictures: ``FolderSink(<fallback_dir>/<subdir>)``
    and one message through ``warn`` (default ``warnings.warn``; pass a no-op on ranks
    that should stay quiet). ``fallback_dir``: ``trainer.log_dir`` (or ``default_root_dir``).
    Nothing is created on disk and no logger's experiment is started until a sink writes.
    """
    loggers = list(loggers)
    if dry_run:
        return NullSink()
    sinks: list[Sink] = []
    others: list[str] = []
    dummies = 0
    for logger in loggers:
        if isinstance(logger, dummy_logger_types()):
            dummies += 1
        elif isinstance(logger, tensorboard_logger_types()):
            sinks.append(TensorBoardSink.for_logger(logger))
        elif isinstance(logger, wandb_logger_types()):
            sinks.append(WandbSink(logger))
        elif isinstance(logger, mlflow_logger_types()):
            sinks.append(MLflowSink(logger))
        elif isinstance(logger, csv_logger_types()):
            sinks.append(FolderSink(os.path.join(logger.log_dir, subdir)))
        else:
            others.append(type(logger).__name__)
    if len(sinks) == 1:
        return sinks[0]
    if sinks:
        return FanOutSink(sinks)
    if dummies and not others:
        return NullSink()
    root = os.path.join(fallback_dir, subdir)
    found = f" (it has {', '.join(others)})" if others else ""
    message = (
        "GradCAMCallback found no TensorBoardLogger, WandbLogger, MLFlowLogger or CSVLogger "
        f"among trainer.loggers{found}; writing PNG files and scalars.csv to {root} instead. "
        "Pass logger=TensorBoardLogger(...) (or WandbLogger, MLFlowLogger) to the Trainer to "
        "see them there."
    )
    if warn is None:
        warnings.warn(message, UserWarning, stacklevel=2)
    else:
        warn(message)
    return FolderSink(root)
