"""Per-task logic behind ``GradCAMCallback``: what a batch holds, what a map explains, what
is drawn and measured (``base.CAMTask``); the callback itself is plumbing only."""

from .base import CAMTask, PassReport, TaskOptions, register_task, registered_tasks, task_named

__all__ = [
    "CAMTask",
    "PassReport",
    "TaskOptions",
    "register_task",
    "registered_tasks",
    "task_named",
]
