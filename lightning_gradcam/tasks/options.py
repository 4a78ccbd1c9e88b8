"""Checks of the task options every task reads the same way, before any training time is
spent: each returns the value to keep, or raises an error saying what was wrong and what to
pass instead. A task narrows them (``CAMTask.check_target``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TARGET_POLICIES", "check_auto_target", "check_target"]

TARGET_POLICIES = ("auto", "label", "prediction")


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


def check_auto_target(target: object, task: str, why: str) -> str:
    """``"auto"``, the only ``target`` of a task whose maps are not chosen by class; the
    error names the ``task`` and says ``why``."""
    if isinstance(target, str) and target == "auto":
        return target
    raise ValueError(f"target={target!r}: {why}; leave target='auto' for the {task} task")
