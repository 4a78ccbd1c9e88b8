"""GradCAMYOLOCallback: the Ultralytics plumbing over the YOLO detection task. When: after
each validation during training (every ``every_n_epochs``). Which samples: the first of the
trainer's validation set. Where: TensorBoard under the run's ``save_dir``, and
``results.csv`` / ``trainer.metrics``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..core.methods import check_methods
from ..core.resilience import PassGuard, run_in_chunks
from ..lightning.arguments import CallbackArguments
from ..lightning.population import ValidationMetrics
from .explain import YOLODetectionCAM
from .results import ResultsColumns
from .task import YOLODetectionTask
from .trainer import TensorBoardWriter, is_main_process, validated_model, validation_batch
from .validation_set import ValidationSet

__all__ = ["GradCAMYOLOCallback"]

_EVENTS = ("on_pretrain_routine_end", "on_val_end", "on_fit_epoch_end", "teardown")


class GradCAMYOLOCallback:
    """Explain a fixed set of validation images after each validation of an Ultralytics
    YOLO training run, per ground-truth object, with the detection that finds it.

    Example::

        from ultralytics import YOLO
        from lightning_gradcam import GradCAMYOLOCallback

        yolo = YOLO("yolo11n.yaml")
        GradCAMYOLOCallback(num_samples=4, methods=("gradcam",)).attach(yolo)
        yolo.train(data="shapes.yaml", epochs=30, imgsz=128)
        # results.csv: ..., gradcam/head_input/gradcam/energy_in_box, ...

    At each explained epoch, for every ground-truth object of the fixed samples, the
    detection explained is Ultralytics' NMS detection (at ``conf``/``iou``) of its class
    with IoU >= 0.5 and the highest confidence; its map is the Grad-CAM (Selvaraju et al.,
    ICCV 2017) or Grad-CAM++ (Chattopadhay et al., WACV 2018) of its own class logit, at
    the Detect head's input for its level (``layer=None``) or at a named layer. The model
    explained is the one just validated: the EMA.

    The pictures and scalars go to TensorBoard under the run's ``save_dir`` (Ultralytics'
    own event files when its TensorBoard callback is on), at step ``epoch + 1`` as
    Ultralytics logs. The scalars are also columns of ``results.csv`` and keys of
    ``trainer.metrics``: a missed object, or a map without positive evidence, counts 0 in
    ``energy_in_box`` and ``pointing_game``; drift is ``nan`` at the first pass.

    Logged tags (under ``<tag_prefix>/<layer>/``; ``<layer>`` is ``head_input`` by
    default; ``docs/yolo.md#tags``):

    - ``<method>/object_NN``: image: object NN's tile (ground truth green, detection yellow)
    - ``<method>/grid``: image: every object's tile
    - ``<method>/filmstrip``: image: rows = objects, columns = passes
    - ``<method>/energy_in_box``: scalar: share of the map in the object's box
    - ``<method>/pointing_game``: scalar: share of maps peaking in the box
    - ``<method>/found_rate``: scalar: share of the objects a detection found
    - ``<method>/no_evidence_rate``: scalar: share of found objects without evidence
    - ``<method>/drift_vs_prev``: scalar: ``1 - Pearson`` against the previous pass
    - ``<method>/drift_vs_first``: scalar: the same against the first pass
    - ``skipped_passes``: scalar: failed passes so far

    Args:
        layer: None (the Detect head's input at each detection's level) or a dotted layer
            name of the ``DetectionModel`` (``"model.15"``).
        num_samples: validation images explained (the first ones of the validation set).
        methods: CAM methods (not the guided ones).
        every_n_epochs: explain every n-th epoch (and the last one).
        conf, iou: Ultralytics' NMS thresholds for the detections that can find an object.
        class_names: names for the pictures (default: the dataset's ``names``).
        batch_parser: turns the validation batch into Ultralytics' ``img``/``bboxes``/
            ``cls``/``batch_idx`` dict, for custom datasets.
        colormap, alpha, tag_prefix, max_image_size, filmstrip_size: as ``GradCAMCallback``.
        on_error: ``"warn"`` (a failed pass is a warning, training goes on) or ``"raise"``.
        metrics_on: ``"samples"``: the scalars are the fixed samples'; ``"validation"``:
            ``energy_in_box``, ``pointing_game``, ``found_rate`` and ``no_evidence_rate``
            are measured over every image of the validation set, by rank 0
            (``yolo.validation_set``); drift and pictures stay on the fixed samples.
        metrics_batches: with ``metrics_on="validation"``, measure only the first N
            batches of the validation set.

    Wrong arguments fail in the constructor or ``attach`` (the layer, against the model);
    samples, model and layer that cannot be explained fail at the trial pass before the
    first epoch.

    Under Ultralytics DDP (``device="0,1"``), Ultralytics pickles the trainer's callbacks
    into every worker it launches: rank 0 takes the samples, explains the EMA model it
    validated and writes, the other ranks do nothing (no collective call; they wait for
    rank 0 at Ultralytics' own end-of-epoch broadcast, as they do for its validation). The
    callback object in the launching process is not the one that ran: its ``history`` stays
    empty, and the results are in the run's ``save_dir`` (``results.csv``, event files).
    """

    def __init__(
        self,
        layer: str | None = None,
        num_samples: int = 8,
        methods: str | Sequence[str] = ("gradcam", "gradcam++"),
        every_n_epochs: int = 1,
        conf: float = 0.25,
        iou: float = 0.7,
        class_names: Sequence[str] | None = None,
        batch_parser: Callable[[Any], Any] | None = None,
        colormap: str | int = "jet",
        alpha: float = 0.5,
        tag_prefix: str = "gradcam",
        max_image_size: int | None = 256,
        filmstrip_size: int | None = 96,
        on_error: str = "warn",
        metrics_on: str = "samples",
        metrics_batches: int | None = None,
    ):
        check_methods(methods, detectors=True)
        for name, value in (("conf", conf), ("iou", iou)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.args = CallbackArguments.check(
            layer=layer,
            num_samples=num_samples,
            methods=methods,
            every_n_epochs=every_n_epochs,
            batch_parser=batch_parser,
            colormap=colormap,
            alpha=alpha,
            tag_prefix=tag_prefix,
            max_image_size=max_image_size,
            class_names=class_names,
            filmstrip_size=filmstrip_size,
            on_error=on_error,
            target="auto",
            images=None,
            labels=None,
            boxes=None,
            masks=None,
            mean=None,
            std=None,
            reshape=None,
            faithfulness=(),
            task=YOLODetectionTask,
            model=None,
            alarm_after_epoch=0,
            metrics_on=metrics_on,
            metrics_batches=metrics_batches,
        )
        self.layer, self.methods = self.args.layer, self.args.options.methods
        self.num_samples, self.every_n_epochs = self.args.num_samples, self.args.every_n_epochs
        self.tag_prefix, self.on_error = self.args.prefix, self.args.on_error
        self.conf, self.iou = float(conf), float(iou)
        self.task = YOLODetectionTask(self.args.options, conf=self.conf, iou=self.iou)
        self.samples = None
        self.history: list[dict[str, Any]] = []
        self.columns = ResultsColumns()
        self.whole_set = ValidationSet(
            self.args.metrics_on, self.args.metrics_batches, self.args.on_error
        )
        self._guard = PassGuard("GradCAMYOLOCallback", self.on_error)
        self._trainer: Any = None
        self._writer: TensorBoardWriter | None = None
        self._pending: dict[str, float] | None = None
        self._attached_to: int | None = None

    # ------------------------------------------------------------------ attaching

    def attach(self, yolo: Any) -> GradCAMYOLOCallback:
        """Register on ``yolo``'s own callbacks (``yolo.add_callback``), after checking that
        it is a YOLO detection model and that ``layer`` is one of its modules."""
        if not callable(getattr(yolo, "add_callback", None)):
            raise TypeError(
                f"attach takes an Ultralytics YOLO model (ultralytics.YOLO), got "
                f"{type(yolo).__name__}; pass the YOLO wrapper whose .train() you call, "
                "e.g. YOLO('yolo11n.yaml')"
            )
        if self._attached_to is not None:
            raise RuntimeError("this GradCAMYOLOCallback is attached already; make a new one")
        try:
            YOLODetectionCAM(
                yolo, layer=self.layer, methods=self.methods, conf=self.conf, iou=self.iou
            )
        except TypeError as error:
            raise TypeError(
                f"GradCAMYOLOCallback explains YOLO detection models (task 'detect'): {error}"
            ) from None
        for event in _EVENTS:
            yolo.add_callback(event, getattr(self, event))
        self._attached_to = id(yolo)
        return self

    @property
    def layer_name(self) -> str:
        """The explained layer's name in the tags (``head_input`` by default)."""
        return self.task.layer_name or "head_input"

    @property
    def tags(self) -> tuple[str, ...]:
        """The scalars' tags: ``results.csv`` columns and ``trainer.metrics`` keys."""
        return self.columns.names

    @property
    def log_dir(self) -> str | None:
        """Where the event files are written (the run's ``save_dir``)."""
        return None if self._writer is None else self._writer.log_dir

    # ------------------------------------------------------------------ Ultralytics events

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        """Take the fixed samples and run the trial pass: before the first epoch."""
        if not is_main_process():
            return
        self._trainer = trainer
        if self.samples is None:
            samples = self.task.parse_batch(validation_batch(trainer, self.num_samples))
            self.task.check_samples(samples)
            self.samples = samples.head(self.num_samples)
        names = self.args.options.class_names
        if names is None and isinstance(getattr(trainer, "data", None), dict):
            data_names = trainer.data.get("names")
            if isinstance(data_names, dict):
                names = tuple(str(data_names[k]) for k in sorted(data_names))
            elif data_names:
                names = tuple(str(n) for n in data_names)
            self.task.options = dataclasses.replace(self.task.options, class_names=names)
        self._trial_pass(validated_model(trainer))
        self.whole_set.trial(trainer, self.task, validated_model(trainer))
        self.columns.declare(f"{self.tag_prefix}/{self.layer_name}", self.methods)
        self._writer = TensorBoardWriter(str(trainer.save_dir))

    def on_val_end(self, validator: Any) -> None:
        """After each validation in training: explain the model just validated, and lend
        the scalars to the ``results.csv`` row written next (``results.py``)."""
        trainer = self._trainer
        if trainer is None or not getattr(validator, "training", False) or not is_main_process():
            return  # the final validation of best.pt, or a standalone validation
        epoch = int(trainer.epoch)
        due = (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 >= int(trainer.epochs)
        scalars = self._explain_and_log(trainer, epoch) if due else {}
        self.columns.lend(trainer, scalars)
        self._pending = scalars

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """The scalars move from ``trainer.lr`` to ``trainer.metrics`` (for the loggers)."""
        if self._pending is None:
            return
        self.columns.give_back(trainer)
        if isinstance(getattr(trainer, "metrics", None), dict):
            trainer.metrics.update(self._pending)
        self._pending = None

    def teardown(self, trainer: Any) -> None:
        """Close the event file this callback opened (Ultralytics closes its own)."""
        if self._writer is not None:
            self._writer.close()

    # ------------------------------------------------------------------ the CAM pass

    def _trial_pass(self, network: torch.nn.Module) -> None:
        samples = self.samples
        try:
            run_in_chunks(
                lambda start, stop: self.task.explain_range(network, samples, start, stop),
                len(samples),
                self.task.combine,
            )
        except Exception as error:
            error.add_note(
                "GradCAMYOLOCallback: the trial CAM pass before training failed; fix the "
                "callback's layer/methods/batch_parser (or the model) before training."
            )
            raise

    def _explain_and_log(self, trainer: Any, epoch: int) -> dict[str, float]:
        step, samples, task = epoch + 1, self.samples, self.task
        network = validated_model(trainer)
        prefix = f"{self.tag_prefix}/{self.layer_name}"
        logged: dict[str, float] = {}
        whole: dict[str, float] | None = None  # metrics_on="validation": the set's means
        if self.whole_set.enabled:
            means = self.whole_set.means(trainer, task, network)
            whole = {f"{prefix}/{tag}": value for tag, value in (means or {}).items()}

        def log(result: Any) -> None:
            report = task.report(result, samples, step, epoch)
            writer = self._writer.writer()
            for tag, image, _ in report.images:
                writer.add_image(f"{prefix}/{tag}", image, global_step=step, dataformats="HWC")
            for method in self.methods:
                strip = task.filmstrip(method)
                writer.add_image(f"{prefix}/{method}/filmstrip", strip, step, dataformats="HWC")
            scalars = {f"{prefix}/{tag}": float(v) for tag, v in report.scalars.items()}
            if whole is not None:  # the whole set's values in place of the samples' own
                scalars = ValidationMetrics.merge(scalars, whole)
            self._write_scalars(scalars, step)
            self._writer_flush()
            logged.update(scalars)
            self.history.append({"epoch": epoch, "step": step, "scalars": report.summary})

        outcome = self._guard.run_chunked(
            f"the CAM pass at epoch {step}",
            lambda start, stop: task.explain_range(network, samples, start, stop),
            len(samples),
            merge=task.combine,
            then=log,
        )
        if not outcome.ok:
            try:  # the writer itself may be what failed
                writer = self._writer.writer()
                writer.add_scalar(f"{prefix}/skipped_passes", self._guard.failed_passes, step)
                self._write_scalars(whole or {}, step)  # the set's means still hold
            except Exception:
                pass
            return dict(whole or {})
        return {k: v for k, v in logged.items() if not math.isnan(v)}

    def _write_scalars(self, scalars: dict[str, float], step: int) -> None:
        if not self._writer.shared:  # else Ultralytics logs trainer.metrics itself
            writer = self._writer.writer()
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=step)

    def _writer_flush(self) -> None:
        flush = getattr(self._writer.writer(), "flush", None)
        if callable(flush):
            flush()

    def filmstrip(self, method: str | None = None) -> np.ndarray:
        """Rows = ground-truth objects, columns = the input, then one tile per pass,
        ``uint8 (H, W, 3)`` RGB; ``method`` defaults to the first one."""
        method = method or self.methods[0]
        if method not in self.methods:
            raise ValueError(f"method {method!r} was not computed; choose from {self.methods}")
        if not self.history:
            raise RuntimeError("no epoch has been explained yet: train with the callback first")
        return self.task.filmstrip(method)
