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

from ..core.faithfulness import check_metrics
from ..core.layouts import check_reshape
from ..core.methods import check_methods
from ..core.render import colormap_code
from ..core.resilience import check_on_error
from ..tasks import CAMTask, TaskOptions, registered_tasks, task_named
from ..tasks.classification import ClassificationTask
from ..tasks.classification_samples import Samples, make_samples
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

TARGET_POLICIES = ("auto", "label", "prediction")


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


def check_target(target: object) -> object:
    """The callback's ``target`` argument, checked: a policy, a class id, one id per image
    (a long tensor), or a callable."""
    if isinstance(target, str):
        if target not in TARGET_POLICIES:
            raise ValueError(
                f"target {target!r} is not a policy; use one of {', '.join(TARGET_POLICIES)}, "
                "a class id, a sequence of class ids (one per image) or a callable"
            )
        return target
    if isinstance(target, bool):
        raise TypeError("target must be a class id, not a bool")
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"target class id must be >= 0, got {target}")
        return target
    if isinstance(target, torch.Tensor) or (
        isinstance(target, Sequence) and not isinstance(target, str)
    ):
        ids = torch.as_tensor(target)
        if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(
                f"a target sequence must hold one integer class id per image, got shape "
                f"{tuple(ids.shape)} {ids.dtype}"
            )
        if bool((ids < 0).any()):
            raise ValueError(f"target class ids must be >= 0, got {ids.tolist()}")
        return ids.long()
    if callable(target):
        return target
    raise TypeError(
        f"target must be 'auto', 'label', 'prediction', a class id, a sequence of class "
        f"ids or a callable, got {type(target).__name__}"
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
    user_images: Samples | None
    metrics_on: str = "samples"
    metrics_batches: int | None = None

    @classmethod
    def check(cls, **kwargs: Any) -> CallbackArguments:
        """Every argument checked, before any training time is spent."""
        layer = kwargs["layer"]
        if layer is not None and (not isinstance(layer, str) or not layer.strip()):
            raise ValueError(
                f"layer must be a dotted module name such as 'layer4' or None, got {layer!r}"
            )
        parser = kwargs["batch_parser"]
        if parser is not None and not callable(parser):
            raise TypeError(f"batch_parser must be callable, got {type(parser).__name__}")
        mean, std = channel_stats(kwargs["mean"], "mean"), channel_stats(kwargs["std"], "std")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if mean and std and len(mean) != len(std):
            raise ValueError(
                f"mean has {len(mean)} channels but std has {len(std)}; give one "
                "value per image channel to both"
            )
        colormap_code(kwargs["colormap"])  # raises with the list of names
        alpha = kwargs["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        prefix = kwargs["tag_prefix"]
        if not isinstance(prefix, str) or not prefix.strip("/ "):
            raise ValueError(f"tag_prefix must be a non-empty string, got {prefix!r}")
        names = kwargs["class_names"]
        if names is not None and (
            isinstance(names, str) or not all(isinstance(n, str) for n in names)
        ):
            raise ValueError("class_names must be a sequence of strings, one per class id")
        options = TaskOptions(
            methods=() if kwargs["methods"] is None else check_methods(kwargs["methods"]),
            layer=layer,
            reshape=check_reshape(kwargs["reshape"]),
            target=check_target(kwargs["target"]),
            mean=mean,
            std=std,
            colormap=kwargs["colormap"],
            alpha=float(alpha),
            max_image_size=optional_size(kwargs["max_image_size"], "max_image_size"),
            class_names=tuple(names) if names is not None else None,
            filmstrip_size=optional_size(kwargs["filmstrip_size"], "filmstrip_size"),
            faithfulness=check_metrics(kwargs["faithfulness"]),
            batch_parser=parser,
        )
        num_samples = positive_int(kwargs["num_samples"], "num_samples")
        images = kwargs["images"]
        given = {k: kwargs[k] for k in ("labels", "boxes", "masks") if kwargs[k] is not None}
        if images is None and given:
            raise ValueError(
                "labels, boxes and masks describe the images passed as images=...; pass "
                "images too, or return them from batch_parser for validation images"
            )
        task = check_task(kwargs["task"])
        if images is not None and task not in (None, "classification", ClassificationTask):
            raise ValueError(
                "images=... (with labels, boxes, masks) are classification samples; for "
                f"task={task!r} let the callback take its samples from the validation batches"
            )
        metrics_on, metrics_batches = check_metrics_on(
            kwargs.get("metrics_on", "samples"), kwargs.get("metrics_batches")
        )
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
            every_n_epochs=positive_int(kwargs["every_n_epochs"], "every_n_epochs"),
            prefix=prefix.strip("/ "),
            model=check_model(kwargs["model"]),
            on_error=check_on_error(kwargs["on_error"]),
            task=task,
            alarm_after_epoch=positive_int(kwargs["alarm_after_epoch"], "alarm_after_epoch", 0),
            user_images=None if images is None else make_samples(images, **given),
        )

    def make_task(
        self, network: nn.Module | None, batch: object, name: str | None = None
    ) -> CAMTask:
        """The task: the one named by ``task=`` (or ``name``, from a checkpoint), else the
        first registered task that recognises ``network`` and ``batch`` (classification when
        neither is known: the callback's own images)."""
        chosen = self.task or name
        if isinstance(chosen, str):
            chosen = task_named(chosen)
        if chosen is None:
            if network is None:
                chosen = ClassificationTask
            else:
                chosen = next(t for t in registered_tasks() if t.recognises(network, batch))
        options = self.options
        if not options.methods:  # methods=None: the task's own
            options = dataclasses.replace(options, methods=chosen.default_methods)
        return chosen(options)
