"""The checks of ``GradCAMCallback``'s constructor arguments: each returns the value to keep,
or raises a ``ValueError``/``TypeError`` that says what was wrong and what to pass instead."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .batch import Samples

__all__ = [
    "TARGET_POLICIES",
    "positive_int",
    "optional_size",
    "channel_stats",
    "check_model",
    "check_target",
    "check_samples",
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


def check_samples(
    samples: Samples,
    target: object,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> None:
    """The images to explain against the other arguments: one class id per image, labels
    for ``target="label"``, one ``mean``/``std`` value per channel (or one for all)."""
    if isinstance(target, torch.Tensor) and target.numel() != len(samples):
        raise ValueError(
            f"target gives {target.numel()} class ids but {len(samples)} images are "
            "explained; give one class id per image"
        )
    if isinstance(target, str) and target == "label" and samples.labels is None:
        raise ValueError(
            "target='label' but the images come without labels; pass labels=..., return "
            "(images, labels) from batch_parser, or use target='auto'/'prediction'"
        )
    channels = samples.images.shape[1]
    for name, stats in (("mean", mean), ("std", std)):
        if stats is not None and len(stats) not in (1, channels):
            raise ValueError(
                f"{name} has {len(stats)} values but the images have {channels} channels"
            )
