"""Per-task logic behind ``GradCAMCallback``: what a batch holds, what a map explains, what
is drawn and measured (``base.CAMTask``); the callback itself is plumbing only.

Built-in tasks are asked in this order (the most specific first; classification, which
recognises anything, last). ``register_task`` puts a new task before them.
"""

from .base import (
    CAMTask,
    PassReport,
    TaskOptions,
    TaskSamples,
    register_task,
    registered_tasks,
    task_named,
    unregister_task,
)
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

register_task(DetectionTask, first=False)
register_task(SegmentationTask, first=False)
register_task(ClassificationTask, first=False)

__all__ = [
    "CAMTask",
    "ClassificationTask",
    "DetectionTask",
    "PassReport",
    "SegmentationTask",
    "TaskOptions",
    "TaskSamples",
    "register_task",
    "registered_tasks",
    "task_named",
    "unregister_task",
]
