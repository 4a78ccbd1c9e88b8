"""GradCAMTrainerCallback: the Hugging Face ``Trainer`` plumbing over the CAM tasks. When:
each evaluation. Which samples: the first of ``eval_dataset`` (or ``images=``). Where: the
Trainer's TensorBoard run, and the evaluation's metrics (``eval_gradcam/...``)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback

from ..core.layers import full_layer_name, resolve_layer
from ..core.resilience import PassGuard
from ..lightning.arguments import CallbackArguments
from ..lightning.batch import FixedSamples
from ..lightning.passes import trial_pass
from ..lightning.population import ValidationMetrics
from ..lightning.sinks import Sink
from ..tasks import CAMTask
from .evaluation_set import EvaluationSet, check_evaluation_metrics
from .metrics import EvaluationMetrics, same_on_every_rank
from .samples import calling_trainer, eval_batch, sink_for_trainer, to_task_batch

__all__ = ["GradCAMTrainerCallback"]

_EVAL_LOG = re.compile(r"^(eval(?:_.+)?)_runtime$")


class GradCAMTrainerCallback(TrainerCallback):
    """Explain a fixed set of evaluation samples at each evaluation of a ``transformers.Trainer``.

    Example::

        from lightning_gradcam import GradCAMTrainerCallback
        trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,
                          callbacks=[GradCAMTrainerCallback(methods=("gradcam",))])
        # TrainingArguments(metric_for_best_model="gradcam/vit.layers.0/gradcam/energy_in_box",
        #                   load_best_model_at_end=True, greater_is_better=True, ...)

    Tags (in the Trainer's TensorBoard run): ``<tag_prefix>/<layer>/<method>/{sample_NN,
    grid, drift_vs_prev, drift_vs_first, energy_in_box, pointing_game, ...}`` as for
    ``GradCAMCallback``. Every scalar also enters the evaluation's metrics (and so
    ``state.log_history``, ``metric_for_best_model``, ``EarlyStoppingCallback``) as
    ``eval_<tag_prefix>/<layer>/<method>/<name>``, with the same keys at every evaluation:
    ``NaN`` where nothing is measurable (drift before a second pass, every key of a failed
    pass), and ``eval_<tag_prefix>/<layer>/skipped_passes`` (``hf.metrics``).

    The arguments are ``GradCAMCallback``'s (same meaning, same checks) where they apply:
    ``layer`` (``None``: the model's default from its config), ``methods`` (``None``: the
    task's defaults, ``CAMTask.default_methods``: classification ``gradcam``, ``gradcam++``;
    segmentation ``gradcam``, ``hirescam``; resolved at train begin, when the task is
    known; ``callback.methods`` says which), ``num_samples``, ``target``,
    ``images``/``labels``/``boxes``/``masks`` (instead of the first items of
    ``eval_dataset``, which may hold ``pixel_values``, ``labels`` and
    optionally ``boxes``/``masks``; segmentation ``labels`` are ``(H, W)`` class ids),
    ``batch_parser``, ``mean``/``std``, ``colormap``, ``alpha``, ``tag_prefix``,
    ``max_image_size``, ``class_names``, ``filmstrip_size``, ``reshape``,
    ``faithfulness``, ``on_error``, ``task``. Mistakes fail at ``on_train_begin``, before
    the first step (a trial pass on every rank); a later failed pass warns and is skipped.
    Under a distributed run rank zero computes and writes, and every rank receives the same
    scalars.

    ``metrics_on="evaluation"`` measures ``energy_in_box`` / ``energy_in_mask``,
    ``pointing_game`` and ``no_evidence_rate`` over every item of the evaluated set instead
    of the fixed samples (``metrics_batches=N``: the first N batches of each process's
    share), split across the processes and joined by one ``all_reduce``, under the same
    keys (``hf.evaluation_set``); pictures and drift stay on the fixed samples. Classification
    items then need ``boxes`` or ``masks``, and the set is measured with a forward of the
    callback's own.
    """

    def __init__(
        self,
        layer: str | None = None,
        num_samples: int = 8,
        methods: str | Sequence[str] | None = None,
        target: Any = "auto",
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
        on_error: str = "warn",
        task: str | type[CAMTask] | None = None,
        metrics_on: str = "samples",
        metrics_batches: int | None = None,
    ):
        # One explanation per evaluation; the module is the Trainer's model.
        self.args = CallbackArguments.check(
            layer=layer,
            num_samples=num_samples,
            methods=methods,
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
            on_error=on_error,
            task=task,
        )
        metrics_on, metrics_batches = check_evaluation_metrics(metrics_on, metrics_batches, target)
        self.whole_set = EvaluationSet(metrics_on, metrics_batches, self.args.on_error)
        self.layer = self.args.layer
        self._methods_given = self.args.options.methods  # () for methods=None: the task's
        self.tag_prefix, self.on_error = self.args.prefix, self.args.on_error
        self._fixed = FixedSamples(self.args)
        self._guard = PassGuard("GradCAMTrainerCallback", self.on_error)
        self._sink: Sink | None = None
        self.log_dir: str | None = None
        self._network: nn.Module | None = None
        self._trainer: Any = None
        self._metrics: EvaluationMetrics | None = None
        self._last: tuple[int, dict[str, float]] | None = None  # (step, metrics) given
        self.history: list[dict[str, Any]] = []

    @property
    def task(self) -> CAMTask | None:
        """The task explained (chosen at train begin unless ``task=`` named it)."""
        return self._fixed.task

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods computed: those given, or (``methods=None``) the task's defaults
        (``CAMTask.default_methods``) once the task is known at train begin (``()`` until
        then)."""
        task = self.task
        return task.options.methods if task is not None else self._methods_given

    def _layer(self) -> str | None:
        return self.task.layer_name if self.task is not None else self.layer

    # ------------------------------------------------------------------ Trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, model=None, **kwargs):
        trainer = calling_trainer()
        refuse_sharded(trainer)
        network = model if model is not None else getattr(trainer, "model", None)
        if not isinstance(network, nn.Module):
            raise TypeError("GradCAMTrainerCallback: the Trainer handed no model to explain")
        self._network = network
        if self._fixed.samples is None:
            batch = None if trainer is None else eval_batch(trainer, self.args.num_samples)
            if batch is None:
                raise ValueError(
                    "GradCAMTrainerCallback needs samples to explain: give the Trainer an "
                    "eval_dataset (items with pixel_values and labels) or pass images=... "
                    "(with labels=, boxes=, masks=) to the callback"
                )
            batch = to_task_batch(batch)
            self._fixed.take(network, batch)
            self._fixed.finish()
        if self.layer is not None:
            resolve_layer(network, self.layer)  # LayerNotFoundError, with close matches
            self.task.layer_name = full_layer_name(network, self.layer)
        self._guard = PassGuard("GradCAMTrainerCallback", self.on_error)
        self._metrics = self._trial(network)  # every rank: all fail together
        if self.whole_set.enabled and trainer is None:
            raise RuntimeError(
                "GradCAMTrainerCallback(metrics_on='evaluation') measures the Trainer's "
                "eval_dataset, but no transformers.Trainer is calling it"
            )
        self.whole_set.trial(trainer, self.task, network)  # every rank: its share's first batch
        self._trainer = trainer
        self._last = None
        self._sink, self.log_dir = sink_for_trainer(trainer, args.output_dir, self.tag_prefix)

    def _trial(self, network: nn.Module) -> EvaluationMetrics:
        """The trial pass (``GradCAMCallback``'s checks); the keys a pass gives are read off
        its result, reported by a copy of the task (the drift references stay unset)."""
        recorder = _Recorder(self.task)
        trial_pass(recorder, network, self._fixed.samples)
        result = recorder.result()
        metrics = EvaluationMetrics(f"{self.tag_prefix}/{self._layer()}", self.methods)
        metrics.expect(copy.deepcopy(self.task).report(result, self._fixed.samples, 0, 0).scalars)
        return metrics

    def on_log(self, args: Any, state: Any, control: Any, logs=None, **kwargs):
        # An evaluation's metrics are logged (Trainer.log) before on_evaluate and before the
        # best-model check reads them; this is the dict both see, so the scalars go in here.
        match = next((m for m in map(_EVAL_LOG.match, logs or {}) if m), None)
        if match is None or self._metrics is None or self._network is None:
            return
        step = int(state.global_step)
        if self._last is None or self._last[0] != step:  # once per step: several eval sets
            metrics = {}
            if state.is_world_process_zero:
                metrics = self._metrics.complete(self._explain_and_log(state))
            self._last = (step, same_on_every_rank(metrics))
        given = self._last[1]
        if self.whole_set.enabled:  # every rank: its share of the set, one all_reduce
            given = self._whole_set_metrics(state, match.group(1), given, kwargs)
        added = {f"{match.group(1)}_{tag}": value for tag, value in given.items()}
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)

    def _whole_set_metrics(
        self, state: Any, metric_prefix: str, given: dict[str, float], events: dict
    ) -> dict[str, float]:
        """``given`` with the means over the set evaluated under ``metric_prefix`` in place
        of the fixed samples' own scalars; rank zero writes them to TensorBoard (for a set
        ``<name>`` of several, under ``<tag_prefix>_<name>/``)."""
        trainer, step = self._trainer, int(state.global_step)
        dataset = EvaluationSet.evaluated_dataset(
            trainer, events.get("eval_dataloader"), metric_prefix
        )
        means = self.whole_set.means(
            trainer, self.task, self._network, dataset, step, metric_prefix
        )
        prefix = f"{self.tag_prefix}/{self._layer()}"
        if state.is_world_process_zero and means:
            name = metric_prefix[len("eval_") :]
            board = prefix if not name else f"{self.tag_prefix}_{name}/{self._layer()}"
            for tag, value in means.items():
                self._sink.scalar(f"{board}/{tag}", value, step)
            self._sink.flush()
        return self.whole_set.in_metrics(given, means, prefix)

    # ------------------------------------------------------------------ the CAM pass

    def _explain_and_log(self, state: Any) -> dict[str, float] | None:
        """One guarded pass, drawn and written: its scalars, ``None`` when it failed."""
        step, samples, task = int(state.global_step), self._fixed.samples, self.task
        prefix = f"{self.tag_prefix}/{self._layer()}"
        logged: dict[str, float] = {}

        def log(result: Any) -> None:
            epoch = int(state.epoch or 0)
            report = task.report(result, samples, step, epoch)
            for method, values in task.faithfulness(self._network, samples, result).items():
                report.summary.setdefault(method, {}).update(values)
                report.scalars.update({f"{method}/{k}": v for k, v in values.items()})
            for tag, image, caption in report.images:
                self._sink.image(f"{prefix}/{tag}", image, step, caption=caption)
            scalars = report.scalars
            if self.whole_set.enabled:  # those the whole set measures are the set's
                scalars = ValidationMetrics.merge(scalars, {})
            for tag, value in scalars.items():
                self._sink.scalar(f"{prefix}/{tag}", value, step)
                logged[f"{prefix}/{tag}"] = float(value)
            self._sink.flush()
            self.history.append({"epoch": state.epoch, "step": step, "scalars": report.summary})

        outcome = self._guard.run_chunked(
            f"the CAM pass at step {step}",
            lambda start, stop: task.explain_range(self._network, samples, start, stop),
            len(samples),
            merge=task.combine,
            then=log,
        )
        if outcome.ok:
            return logged
        try:  # the sink itself may be what failed
            self._sink.scalar(f"{prefix}/skipped_passes", self._metrics.skipped + 1.0, step)
            self._sink.flush()
        except Exception:
            pass
        return None

    def filmstrip(self, method: str | None = None) -> np.ndarray:
        """Rows = samples, columns = the input then one overlay per evaluation, ``uint8
        (H, W, 3)`` RGB; ``method`` defaults to the first one."""
        if not self.history or self.task is None:  # before: methods=None has no methods yet
            raise RuntimeError("no evaluation has run yet: train with the callback first")
        method = method or self.methods[0]
        if method not in self.methods:
            raise ValueError(f"method {method!r} was not computed; choose from {self.methods}")
        return self.task.filmstrip(method)


class _Recorder:
    """``task`` as ``trial_pass`` calls it, keeping what its ``explain_range`` returned."""

    def __init__(self, task: CAMTask):
        self.name = task.name
        self._task = task
        self._parts: list[Any] = []

    def explain_range(self, network: nn.Module, samples: Any, start: int, stop: int | None):
        part = self._task.explain_range(network, samples, start, stop)
        self._parts.append(part)
        return part

    def combine(self, parts: Sequence[Any]) -> Any:
        return self._task.combine(parts)

    def result(self) -> Any:
        parts = self._parts
        return parts[0] if len(parts) == 1 else self._task.combine(parts)


def refuse_sharded(trainer: Any | None) -> None:
    """Raise before training when the Trainer shards the model (FSDP, DeepSpeed): a CAM
    pass runs on rank zero only, and a sharded model needs every rank in each forward."""
    for flag, name in (("is_fsdp_enabled", "FSDP"), ("is_deepspeed_enabled", "DeepSpeed")):
        if getattr(trainer, flag, False):
            raise RuntimeError(
                f"GradCAMTrainerCallback does not run under {name}: a CAM pass runs on rank "
                "zero only, but a sharded model needs every rank in each forward pass. Train "
                "the runs you explain with plain data parallelism (torchrun / accelerate "
                "launch without FSDP or DeepSpeed) or on one device."
            )
