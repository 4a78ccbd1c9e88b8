"""One line to add GradCAMHook to a ``DefaultTrainer`` built from config::

from detectron2.engine import DefaultTrainer
from detectron2_hooks.trainer import GradCAMTrainerMixin

class Trainer(GradCAMTrainerMixin, DefaultTrainer):
    pass

trainer = Trainer(cfg)   # cfg with cfg.GRADCAM.* (add_gradcam_config / to_cam_config)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from detectron2.engine import HookBase, hooks

from .hook import GradCAMHook

__all__ = ["GradCAMTrainerMixin", "insert_before_writers"]


def insert_before_writers(
    hook_list: Sequence[HookBase | None], hook: HookBase | None
) -> list[HookBase | None]:
    """``hook_list`` with ``hook`` inserted before the first ``PeriodicWriter`` (appended if
    there is none), so that what it puts in a step is written in that same step."""
    out = list(hook_list)
    if hook is None:
        return out
    for index, item in enumerate(out):
        if isinstance(item, hooks.PeriodicWriter):
            out.insert(index, hook)
            return out
    out.append(hook)
    return out


class GradCAMTrainerMixin:
    """Adds ``GradCAMHook.from_config(self.cfg)`` to ``build_hooks()``, before the writers;
    nothing when ``cfg.GRADCAM.ENABLED`` is False. Put it before ``DefaultTrainer`` in the
    bases. The hook is available as ``trainer.gradcam_hook`` (None when disabled)."""

    gradcam_hook: GradCAMHook | None = None

    def build_hooks(self) -> list[Any]:
        hook_list = super().build_hooks()  # type: ignore[misc]
        self.gradcam_hook = GradCAMHook.from_config(self.cfg)  # type: ignore[attr-defined]
        return insert_before_writers(hook_list, self.gradcam_hook)
