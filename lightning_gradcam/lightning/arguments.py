"""The checks of ``GradCAMCallback``'s constructor arguments: each returns the value to keep,
or raises a ``ValueError``/``TypeError`` that says what was wrong and what to pass instead."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.layouts import check_reshape
from ..core.methods import check_methods
from ..core.render import colormap_code
from ..core.resilience import check_on_error
from ..tasks import CAMTask, TaskOptions, TaskSamples, registered_tasks, task_named
from ..tasks.options import TARGET_POLICIES, check_target
from .population import check_metrics_on

__all__ = [
    "CallbackArguments",
    "TARGET_POLICIES",
    "check_alarm",
    "check_task",
    "positive_int",
    "optional_size",
    "channel_stats",
    "check_model",
    "check_target",
]


def positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def optional_size(value: object, name: str) -> int | None:
    if value is None:
        return None
    return positive_int(value, name, minimum=16)


def channel_stats(value: object, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = (value,)
    try:
        stats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a sequence of per-channel floats, got {value!r}"
        ) from None
    if not stats or not all(math.isfinite(v) for v in stats):
        raise ValueError(f"{name} must be a non-empty sequence of finite floats, got {value!r}")
    return stats


def check_model(model: object) -> str | Callable[[Any], nn.Module] | None:
    if model is None or callable(model):
        return model
    if isinstance(model, str) and model.strip(". ") and all(model.split(".")):
        return model
    raise ValueError(
        f"model must be an attribute path of the network inside the LightningModule "
        f"('model', 'net.backbone'), a callable pl_module -> nn.Module, or None, got {model!r}"
    )


def check_task(task: object) -> str | type[CAMTask] | None:
    """``None`` (recognise the task), a registered task's name, or a ``CAMTask`` subclass."""
    if task is None or (isinstance(task, type) and issubclass(task, CAMTask)):
        return task
    if isinstance(task, str):
        task_named(task)  # the error lists the names
        return task
    raise TypeError(
        f"task must be None, a task name or a CAMTask subclass, got {type(task).__name__}"
    )


def check_alarm(alarm: object) -> dict[str, float]:
    """``{scalar name: floor}``, e.g. ``{"energy_in_box": 0.3}``; names without a method
    (``energy_in_box``) apply to every method, ``gradcam/energy_in_box`` to one."""
    if alarm is None:
        return {}
    if not isinstance(alarm, Mapping):
        raise TypeError(
            f"alarm must be a mapping of scalar names to floors, e.g. {{'energy_in_box': 0.3}}, "
            f"got {type(alarm).__name__}"
        )
    floors: dict[str, float] = {}
    for name, floor in alarm.items():
        if not isinstance(name, str) or not name.strip("/ "):
            raise ValueError(
                f"alarm keys must be scalar names such as 'energy_in_box', got {name!r}"
            )
        if (
            isinstance(floor, bool)
            or not isinstance(floor, (int, float))
            or not math.isfinite(floor)
        ):
            raise ValueError(f"alarm[{name!r}] must be a finite number (the floor), got {floor!r}")
        floors[name.strip("/ ")] = float(floor)
    return floors


def _given_samples(
    task: type[CAMTask] | None, images: object, given: dict[str, object]
) -> tuple[TaskSamples, type[CAMTask]]:
    """The samples of ``images=`` (with ``labels``/``boxes``/``masks``), read by the task
    named, else by the first registered task that takes given images, and that task."""
    for candidate in [task] if task is not None else registered_tasks():
        samples = candidate.samples_from_arrays(images, **given)
        if samples is not None:
            return samples, candidate
    takers = [t.name for t in registered_tasks() if t.takes_given_images]
    raise ValueError(
        f"task {task.name!r} does not take images=... (the tasks that do: "
        f"{', '.join(map(repr, takers)) or 'none'}); let the callback take its samples from the "
        "validation batches"
    )


@dataclass(frozen=True)
class CallbackArguments:
    """``GradCAMCallback``'s arguments, checked (``check``), and the task they make."""

    options: TaskOptions
    layer: str | None
    num_samples: int
    every_n_epochs: int
    prefix: str
    model: str | Callable[[Any], nn.Module] | None
    on_error: str
    task: str | type[CAMTask] | None
    alarm_after_epoch: int
    user_images: TaskSamples | None
    # The task that took user_images: the one explained when no batch is seen.
    images_task: type[CAMTask] | None = None
    metrics_on: str = "samples"
    metrics_batches: int | None = None

    @classmethod
    def check(
        cls,
        *,
        layer: str | None = None,
        methods: str | Sequence[str] | None = None,
        num_samples: int = 8,
        every_n_epochs: int = 1,
        target: object = "auto",
        images: object = None,
        labels: object = None,
        boxes: object = None,
        masks: object = None,
        batch_parser: Callable[[Any], Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        colormap: str | int = "jet",
        alpha: float = 0.5,
        tag_prefix: str = "gradcam",
        max_image_size: int | None = 256,
        class_names: Sequence[str] | None = None,
        filmstrip_size: int | None = 96,
        reshape: Callable[[Any], Any] | None = None,
        faithfulness: str | Sequence[str] = (),
        model: str | Callable[[Any], nn.Module] | None = None,
        on_error: str = "warn",
        task: str | type[CAMTask] | None = None,
        alarm_after_epoch: int = 0,
        metrics_on: str = "samples",
        metrics_batches: int | None = None,
    ) -> CallbackArguments:
        """Every argument checked, before any training time is spent (the defaults are
        ``GradCAMCallback``'s)."""
        layer = layer
        if layer is not None and (not isinstance(layer, str) or not layer.strip()):
            raise ValueError(
                f"layer must be a dotted module name such as 'layer4' or None, got {layer!r}"
            )
        parser = batch_parser
        if parser is not None and not callable(parser):
            raise TypeError(f"batch_parser must be callable, got {type(parser).__name__}")
        mean, std = channel_stats(mean, "mean"), channel_stats(std, "std")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if mean and std and len(mean) != len(std):
            raise ValueError(
                f"mean has {len(mean)} channels but std has {len(std)}; give one "
                "value per image channel to both"
            )
        colormap_code(colormap)  # raises with the list of names
        alpha = alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        prefix = tag_prefix
        if not isinstance(prefix, str) or not prefix.strip("/ "):
            raise ValueError(f"tag_prefix must be a non-empty string, got {prefix!r}")
        names = class_names
        if names is not None and (
            isinstance(names, str) or not all(isinstance(n, str) for n in names)
        ):
            raise ValueError("class_names must be a sequence of strings, one per class id")
        task = check_task(task)
        # A named task checks its own options; else the protocol's checks, and the task
        # recognised at the first batch refuses what it cannot do (CAMTask.check_samples).
        named = task_named(task) if isinstance(task, str) else task
        checks = named or CAMTask
        options = TaskOptions(
            methods=() if methods is None else check_methods(methods),
            layer=layer,
            reshape=check_reshape(reshape),
            target=checks.check_target(target),
            mean=mean,
            std=std,
            colormap=colormap,
            alpha=float(alpha),
            max_image_size=optional_size(max_image_size, "max_image_size"),
            class_names=tuple(names) if names is not None else None,
            filmstrip_size=optional_size(filmstrip_size, "filmstrip_size"),
            faithfulness=checks.check_faithfulness(faithfulness),
            batch_parser=parser,
        )
        num_samples = positive_int(num_samples, "num_samples")
        images = images
        given = {
            k: v
            for k, v in (("labels", labels), ("boxes", boxes), ("masks", masks))
            if v is not None
        }
        if images is None and given:
            raise ValueError(
                "labels, boxes and masks describe the images passed as images=...; pass "
                "images too, or return them from batch_parser for validation images"
            )
        user_images, images_task = None, None
        if images is not None:
            user_images, images_task = _given_samples(named, images, given)
        metrics_on, metrics_batches = check_metrics_on(metrics_on, metrics_batches)
        if metrics_on == "validation" and isinstance(options.target, torch.Tensor):
            raise ValueError(
                "target= gives one class id per fixed sample; metrics_on='validation' explains "
                "every validation image: use target='auto', 'label', 'prediction', one class "
                "id or a callable"
            )
        return cls(
            metrics_on=metrics_on,
            metrics_batches=metrics_batches,
            options=options,
            layer=layer,
            num_samples=num_samples,
            every_n_epochs=positive_int(every_n_epochs, "every_n_epochs"),
            prefix=prefix.strip("/ "),
            model=check_model(model),
            on_error=check_on_error(on_error),
            task=task,
            alarm_after_epoch=positive_int(alarm_after_epoch, "alarm_after_epoch", 0),
            user_images=user_images,
            images_task=images_task,
        )

    def make_task(
        self, network: nn.Module | None, batch: object, name: str | None = None
    ) -> CAMTask:
        """The task: the one named by ``task=`` (or ``name``, from a checkpoint), else the
        first registered task that recognises ``network`` and ``batch`` (the task that took
        the callback's own images when neither is known)."""
        chosen = self.task or name
        if isinstance(chosen, str):
            chosen = task_named(chosen)
        if chosen is None:
            if network is None:
                if self.images_task is None:
                    raise RuntimeError("no task can be chosen before a batch is seen")
                chosen = self.images_task
            else:
                chosen = next(t for t in registered_tasks() if t.recognises(network, batch))
        # The task recognised now checks what only the protocol's checks saw before.
        chosen.check_target(self.options.target)
        chosen.check_faithfulness(self.options.faithfulness)
        options = self.options
        if not options.methods:  # methods=None: the task's own
            options = dataclasses.replace(options, methods=chosen.default_methods)
        return chosen(options)
