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
from detectron2.utils.events import EventWriter, JSONWriter, TensorboardXWriter

from .hook import GradCAMHook

__all__ = ["GradCAMTrainerMixin", "insert_before_writers"]


def insert_before_writers(
    hook_list: Sequence[HookBase | None], hook: HookBase | None
) -> list[HookBase | None]:
    """``hook_list`` with ``hook`` inserted before the first ``PeriodicWriter`` (appended if
    there is none), so that what it puts in a step is written in that same step.

    For your own ``build_hooks`` (``return insert_before_writers(super().build_hooks(),
    GradCAMHook(...))``); ``GradCAMHook`` needs to run before the writers (see its module
    docstring) and does not move itself."""
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
    bases. The hook is available as ``trainer.gradcam_hook`` (None when disabled).

    The TensorBoard and JSON writers made by ``build_writers()`` are handed to the hook
    (``writers=``), so the scalars of a pass between two writes of the ``PeriodicWriter``
    (period 20) are written too. The ``CommonMetricPrinter`` is left out: an extra write would
    print an extra log line."""

    gradcam_hook: GradCAMHook | None = None
    gradcam_writers: list[EventWriter] = []

    def build_writers(self) -> list[EventWriter]:
        writers = super().build_writers()  # type: ignore[misc]
        self.gradcam_writers = [
            w for w in writers if isinstance(w, (TensorboardXWriter, JSONWriter))
        ]
        return writers

    def build_hooks(self) -> list[Any]:
        self.gradcam_writers = []
        hook_list = super().build_hooks()  # type: ignore[misc]  # calls build_writers()
        self.gradcam_hook = GradCAMHook.from_config(  # type: ignore[attr-defined]
            self.cfg, writers=self.gradcam_writers
        )
        return insert_before_writers(hook_list, self.gradcam_hook)
