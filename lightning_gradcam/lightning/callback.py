"""GradCAMCallback: watch where a Lightning model looks, and how that moves, while it trains.

Plumbing only: when to explain, which fixed samples, where to log, checkpoint state and what
to do on failure. What a batch holds, what a map explains and what is drawn and measured is
the task's (``lightning_gradcam.tasks``); one logged pass is ``logged_pass.LoggedPass``. One
class serves ``pytorch_lightning.Trainer`` and ``lightning.pytorch.Trainer`` (see ``compat``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.layers import full_layer_name, resolve_layer
from ..tasks import CAMTask, TaskOptions
from .announce import NO_SAMPLES, outside_fit
from .arguments import CallbackArguments, check_alarm
from .batch import FixedSamples
from .checkpoint_state import callback_state, restore_callback_state
from .compat import CALLBACK_BASES, refuse_sharded
from .explained import explained_network
from .logged_pass import LoggedPass
from .metrics import AlarmWatch, publish_metrics
from .passes import TrialPass
from .population import WholeSet
from .sinks import Sink, trainer_sinks

__all__ = ["GradCAMCallback"]


class GradCAMCallback(*CALLBACK_BASES):
    """Explain a fixed set of samples after validation epochs and log the maps.

    ``Trainer(callbacks=[GradCAMCallback(layer="net.layer4")])``. The task (classification,
    detection, segmentation) is recognised from the model and its batches
    (``docs/callback.md``). Mistakes fail before the first optimizer step (a trial pass);
    after that a failed pass is skipped with one warning (``on_error``).

    Args:
        layer: dotted name of the layer to explain, relative to the module explained (an
            unambiguous suffix works too), or ``None`` for the model library's default
            layer: its last block or stage (``docs/layouts.md#the-default-layer``,
            ``docs/default-layers.md``). A wrong name fails at ``on_fit_start``, listing
            close matches. Tags use the layer's full name.
        reshape: a callable turning the layer's output into ``(B, C, h, w)``, for layouts the
            engine cannot tell by itself.
        methods: one or more of ``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``,
            ``hirescam``, ``guided_backprop``, ``guided_gradcam``, ``guided_gradcam++``, or a
            name added with ``lightning_gradcam.register_method``; ``None``: the task's
            defaults (classification ``gradcam``, ``gradcam++``; detection and segmentation
            ``gradcam``, ``hirescam``).
        num_samples: how many samples to explain (the first of the first validation
            dataloader, or of ``images``).
        every_n_epochs: explain after every n-th validation run inside ``fit`` (after every
            n-th training epoch when the fit has no validation loop).
        target: classification: which class each map explains, fixed for the run:
            ``"auto"`` (the label when known, else the prediction at the first pass),
            ``"label"``, ``"prediction"``, a class id, one class id per image, or a callable
            mapping the model output to scores ``(B,)`` / ``(B, 1)``.
        images: explain these images ``(N, C, H, W)`` instead of validation images.
        labels: ``(N,)`` class ids of ``images``.
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` pixel box of the deciding object in each of
            ``images``: enables ``energy_in_box``, ``pointing_game``, ``no_evidence_rate``.
        masks: ``(N, H, W)`` boolean masks of the deciding object (same use as ``boxes``).
        batch_parser: callable mapping a validation batch to what the task reads:
            classification ``images``, ``(images, labels)`` or a dict with ``images`` and
            optionally ``labels``, ``boxes``, ``masks``; detection ``(images, targets)``;
            segmentation ``(images, masks)``.
        mean, std: per-channel normalisation of the images, undone for display
            (``x * std + mean``); without them images outside [0, 1] are min-max scaled.
        colormap: ``jet``, ``turbo``, ``inferno``, ``viridis``, ``magma``, ``hot`` or an
            OpenCV ``COLORMAP_*`` constant.
        alpha: heat-map weight in the overlay, in [0, 1].
        tag_prefix: first part of every tag (and the PNG folder's name).
        max_image_size: longer side, in pixels, of each logged picture; ``None`` keeps it.
        class_names: names for class ids in captions.
        filmstrip_size: thumbnail size kept for ``filmstrip()``; ``None`` keeps none.
        faithfulness: any of ``deletion``, ``insertion``, ``average_drop``,
            ``increase_in_confidence`` (classification; ``docs/faithfulness.md``), logged per
            method and for a seeded random map (``<p>/random/...``) as the reference.
        model: what to explain when it is not the LightningModule itself: an attribute path
            (``"model"``, ``"net.backbone"``) or a callable ``pl_module -> nn.Module``.
        on_error: ``"warn"``: after the trial pass, a pass that raises is skipped with a
            one-line warning and a ``<p>/skipped_passes`` scalar; after 3 failures in a row
            the callback switches itself off. Out of memory, the pass is retried on halves
            of the samples. ``"raise"``: the error stops the run.
        task: ``None`` (recognise it), a registered task's name (``"classification"``,
            ``"detection"``, ``"segmentation"``) or a ``CAMTask`` subclass.
        alarm: ``{scalar name: floor}`` (e.g. ``{"energy_in_box": 0.3}``): warn once per
            scalar and method, naming the samples below the floor, when a pass's mean falls
            below it.
        alarm_after_epoch: the alarm is quiet before this epoch (attention is diffuse while
            a model starts to learn).
        metrics_on: ``"samples"``: the scalars are the fixed samples'; ``"validation"``: the
            localisation scalars (``energy_in_box``, ``pointing_game``, ...) are means over
            every validation batch of every rank, under the same tags (``docs/callback.md``).
        metrics_batches: with ``metrics_on="validation"``, measure only the first N
            validation batches per rank (``None``: all of them).

    Each pass logs the task's pictures and scalars under ``<tag_prefix>/<layer>/<method>/``
    to every logger that takes them; every scalar also enters ``trainer.callback_metrics``
    under its tag, on every rank, in time for ``ModelCheckpoint``/``EarlyStopping``.
    ``tags`` holds the exact tags of the scalars logged at every pass (also logged in one line
    at fit start, with the layer chosen). ``history`` lists one dict per pass (``epoch``,
    ``step``, ``scalars``); ``filmstrip(method)`` draws the passes. Only global rank zero
    computes.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning_gradcam import GradCAMCallback

        cam = GradCAMCallback(layer="net.layer4", images=val_images, boxes=val_boxes)
        keep = ModelCheckpoint(monitor="gradcam/net.layer4/gradcam/energy_in_box", mode="max")
        Trainer(callbacks=[cam, keep]).fit(model, train_loader, val_loader)
        cam.tags                       # the monitorable tags, as logged at fit start
        cam.filmstrip("gradcam")       # rows: samples, columns: passes

    Logged tags (classification; ``gradcam`` is ``tag_prefix``; the detection and
    segmentation tasks' own tags: ``docs/torchvision-detection.md``, ``docs/segmentation.md``):

    - ``gradcam/<layer>/inputs``: image, once: the fixed images with their boxes and labels
    - ``gradcam/<layer>/<method>/sample_03``: image: sample 3's overlay, captioned
    - ``gradcam/<layer>/<method>/grid``: image: every overlay side by side
    - ``gradcam/<layer>/<method>/drift_vs_prev``: scalar, from the 2nd pass: mean ``1 - r``
      of each map against the previous pass's
    - ``gradcam/<layer>/<method>/drift_vs_first``: scalar, from the 2nd pass: the same
      against the first pass's
    - ``gradcam/<layer>/<method>/energy_in_box``: scalar, with boxes or masks: mean share of
      the map inside the box (a map without positive evidence counts 0)
    - ``gradcam/<layer>/<method>/pointing_game``: scalar, with boxes or masks: share of maps
      whose peak lies in the box
    - ``gradcam/<layer>/<method>/no_evidence_rate``: scalar, with boxes or masks: share of
      maps without positive evidence
    - ``gradcam/<layer>/skipped_passes``: scalar, at a failed pass: failures so far
    """

    def __init__(
        self,
        layer: str | None = None,
        methods: str | Sequence[str] | None = None,
        num_samples: int = 8,
        every_n_epochs: int = 1,
        target: str | int | Sequence[int] | Callable[[Any], torch.Tensor] = "auto",
        images: torch.Tensor | None = None,
        labels: torch.Tensor | Sequence[int] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        batch_parser: Callable[[Any], Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        colormap: str | int = "jet",
        alpha: float = 0.5,
        tag_prefix: str = "gradcam",
        max_image_size: int | None = 256,
        class_names: Sequence[str] | None = None,
        filmstrip_size: int | None = 96,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        faithfulness: str | Sequence[str] = (),
        model: str | Callable[[Any], nn.Module] | None = None,
        on_error: str = "warn",
        task: str | type[CAMTask] | None = None,
        alarm: Mapping[str, float] | None = None,
        alarm_after_epoch: int = 0,
        metrics_on: str = "samples",
        metrics_batches: int | None = None,
    ):
        args = CallbackArguments.check(
            layer=layer,
            methods=methods,
            num_samples=num_samples,
            every_n_epochs=every_n_epochs,
            target=target,
            images=images,
            labels=labels,
            boxes=boxes,
            masks=masks,
            batch_parser=batch_parser,
            mean=mean,
            std=std,
            colormap=colormap,
            alpha=alpha,
            tag_prefix=tag_prefix,
            max_image_size=max_image_size,
            class_names=class_names,
            filmstrip_size=filmstrip_size,
            reshape=reshape,
            faithfulness=faithfulness,
            model=model,
            on_error=on_error,
            task=task,
            alarm_after_epoch=alarm_after_epoch,
            metrics_on=metrics_on,
            metrics_batches=metrics_batches,
        )
        self.args = args
        self.layer, self.tag_prefix = args.layer, args.prefix
        self._methods_given = args.options.methods  # () for methods=None: the task's
        self.num_samples, self.every_n_epochs = args.num_samples, args.every_n_epochs
        self.model, self.on_error = args.model, args.on_error
        self._alarm = AlarmWatch(check_alarm(alarm), args.alarm_after_epoch)
        self._fixed = FixedSamples(args)
        self._last_step: int | None = None
        self._trial = TrialPass()
        self._eval_count = 0
        self._cam_count = 0
        self._sink: Sink | None = None
        self._warned: set[str] = set()
        self.history: list[dict[str, Any]] = []
        self._passes = LoggedPass(self.on_error, self._alarm, self.history)
        self.whole_set = WholeSet(
            args.metrics_on, args.metrics_batches, self.on_error, self.every_n_epochs
        )

    @property
    def options(self) -> TaskOptions:
        """The checked arguments every task reads (``options.target``, ``options.mean``...)."""
        return self.args.options

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            layer=self.layer,
            methods=self._methods_given or CAMTask.default_methods,
            tag_prefix=self.tag_prefix,
        )

    @property
    def task(self) -> CAMTask | None:
        """The task explained (chosen at the first batch unless ``task=`` named it)."""
        return self._fixed.task

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods computed: those given, or (``methods=None``) the task's defaults once
        the task is known (``()`` before)."""
        task = self._fixed.task
        return task.options.methods if task is not None else self._methods_given

    @property
    def tags(self) -> tuple[str, ...]:
        """The full tags of the scalars logged at every pass from the first (``gradcam/
        <layer>/gradcam/energy_in_box``...): what ``ModelCheckpoint``/``EarlyStopping`` can
        monitor. Known from fit start (the layer may be the library's default), when the
        callback also logs them in one line; a ``RuntimeError`` before."""
        return self._trial.tags

    def _layer(self) -> str | None:
        return self.task.layer_name if self.task is not None else self.layer

    def _network(self, pl_module: Any) -> nn.Module:
        return explained_network(pl_module, self.model)

    # ------------------------------------------------------------------ Lightning hooks

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        refuse_sharded(trainer.strategy)
        network = self._network(pl_module)
        layer = self._layer()
        if layer is not None:
            resolve_layer(network, layer)  # LayerNotFoundError, with close matches
            if self.task is not None:
                self.task.layer_name = full_layer_name(network, layer)
        # a fresh failure count per fit
        self._passes = LoggedPass(self.on_error, self._alarm, self.history)
        self._last_step = None
        if self._fixed.samples is not None:
            self._fixed.set(self._fixed.samples)
            if trainer.is_global_zero:
                self._trial_pass(pl_module)
        self._sink = trainer_sinks(
            trainer, self.tag_prefix, lambda message: self._warn_once("no_logger", message)
        )

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        message = outside_fit(trainer)  # also test(), predict()
        if message is not None and trainer.is_global_zero:
            self._warn_once("not_fit", message)

    on_test_start = on_predict_start = on_validation_start

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.state.fn == "fit" and dataloader_idx == 0 and self.whole_set.enabled:
            network = self._network(pl_module)  # the measure may reuse the step's forward
            task = self._fixed.task_for(network, batch)
            self.whole_set.before_step(trainer, task, network, batch, batch_idx, self._eval_count)

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.state.fn != "fit" or dataloader_idx != 0:
            return
        network = self._network(pl_module)
        if trainer.is_global_zero:
            self._fixed.take(network, batch)
        if self.whole_set.enabled:  # every rank measures its own batches
            task = self._fixed.task_for(network, batch)
            self.whole_set.on_batch(trainer, task, network, batch, batch_idx, self._eval_count)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.whole_set.abandon()  # an open tap's hooks come off the model

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # No sanity check ran: take the validation samples now, for the trial pass before
        # the first optimizer step.
        if self._trial.done or not trainer.is_global_zero or not trainer.enable_validation:
            return
        self._fixed.take_validation(self._network(pl_module), trainer.val_dataloaders)
        if self._fixed.samples is not None:
            self._trial_pass(pl_module)
            if self.whole_set.enabled and not self._fixed.user_given:
                self.whole_set.check(self.task, self._fixed.samples)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.is_global_zero:  # the trial pass, before the first optimizer step
            samples = self._fixed.trial_samples_from_training(
                self._network(pl_module),
                batch,
                trainer.enable_validation,
                self._trial.done,
                self.num_samples,
            )
            if samples is not None:
                self._trial_pass(pl_module, samples)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn != "fit":
            return
        self._fixed.finish()
        if trainer.sanity_checking:
            if trainer.is_global_zero and self._fixed.samples is not None:
                self._trial_pass(pl_module)
            return
        self._evaluation_point(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.enable_validation:  # else explained after validation
            self._fixed.finish()
            self._evaluation_point(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # The weights the fit ends with are explained too. Not reached after an exception.
        if trainer.state.fn != "fit" or not trainer.is_global_zero or self._fixed.samples is None:
            return
        if self._trial.done and self._last_step != int(trainer.global_step):
            self._explain_and_log(trainer, pl_module)

    def _evaluation_point(self, trainer: Any, pl_module: Any) -> None:
        self._eval_count += 1  # on every rank, so the count in any checkpoint is right
        if self._eval_count % self.every_n_epochs:
            return
        scalars: dict[str, float] = {}
        step = int(trainer.global_step)
        self.whole_set.finish()  # metrics_on="validation": one all_reduce, on every rank
        if trainer.is_global_zero:
            if self._fixed.samples is None:  # the whole-set means, if any, alone
                self._warn_once("no_images", NO_SAMPLES)
                if means := self.whole_set.means:
                    scalars = LoggedPass.log_scalars(self._sink, self._prefix(), means, step)
            else:  # whole-set means are logged even when the samples' pass fails
                scalars = self._explain_and_log(trainer, pl_module)
        self.whole_set.means = None
        publish_metrics(trainer, scalars)  # every rank: the same values, for monitors

    # ------------------------------------------------------------------ the CAM pass

    def _trial_pass(self, pl_module: Any, samples: Any = None) -> None:
        """The unlogged pass before the first optimizer step (``passes.TrialPass``), on the
        samples to explain or, while those are not known yet, on ``samples``."""
        samples = self._fixed.samples if samples is None else samples
        network = self._network(pl_module)
        self._trial.run(pl_module.trainer, self.task, network, samples, self.tag_prefix)

    def _explain_and_log(self, trainer: Any, pl_module: Any) -> dict[str, float]:
        """One logged pass (``logged_pass.LoggedPass``); the scalars it logged."""
        step = int(trainer.global_step)
        self._last_step = step
        logged_before = self._passes.passes_logged
        scalars = self._passes.run(
            self.task,
            lambda: self._network(pl_module),
            self._fixed.samples,
            self._sink,
            self._prefix(),
            step,
            int(trainer.current_epoch),
            whole_set=self.whole_set.in_place_of_samples(),
        )
        self._cam_count += self._passes.passes_logged - logged_before
        return scalars

    def _prefix(self) -> str:
        return f"{self.tag_prefix}/{self._layer()}"

    def filmstrip(self, method: str | None = None) -> np.ndarray:
        """Rows = samples (or objects), columns = the input, then one overlay per pass
        (oldest first), as ``uint8 (H, W, 3)`` RGB. ``method`` defaults to the first one."""
        if not self.history or self.task is None:
            raise RuntimeError("no CAM epoch has run yet: train with the callback first")
        method = method or self.methods[0]
        if method not in self.methods:
            raise ValueError(f"method {method!r} was not computed; choose from {self.methods}")
        return self.task.filmstrip(method)

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """``checkpoint_state.callback_state``: counts, task, layer, samples, drift."""
        return callback_state(self._fixed, self._layer(), self._eval_count, self._cam_count)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        counts = restore_callback_state(self._fixed, state_dict, self._warn_once)
        if counts is not None:
            self._eval_count, self._cam_count = counts
