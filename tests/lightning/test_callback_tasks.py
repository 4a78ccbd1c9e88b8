"""The callback is plumbing over tasks: a task registered by a user plugs in with no change to
the callback (recognised, its pictures and scalars logged and monitorable), ``task=`` names one,
and the built-in order picks classification for a classifier."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events
from cam_tiny import LAYER, TinyPL, val_loader

from lightning_gradcam import GradCAMCallback
from lightning_gradcam.tasks import (
    ClassificationTask,
    PassReport,
    register_task,
    registered_tasks,
    unregister_task,
)

pytestmark = pytest.mark.timeout(120)
PREFIX = f"gradcam/{LAYER}"


class CornerTask(ClassificationTask):
    """A user's task: classification, plus how much of each map sits in the top-left quarter."""

    name = "corner"

    @classmethod
    def recognises(cls, network, batch) -> bool:
        return isinstance(batch, dict) and "boxes" in batch  # the tests' validation batches

    def report(self, result, samples, step: int, epoch: int) -> PassReport:
        report = super().report(result, samples, step, epoch)
        maps = result.maps["gradcam"][:, 0]
        h, w = maps.shape[-2:]
        share = maps[:, : h // 2, : w // 2].sum((1, 2)) / maps.sum((1, 2)).clamp_min(1e-12)
        report.scalars["gradcam/corner_share"] = float(share.mean())
        return report


def _fit(tmp_path, callback):
    torch.manual_seed(0)
    trainer = make_trainer(pl, tmp_path, [callback], max_epochs=2)
    trainer.fit(TinyPL(), val_dataloaders=val_loader())
    return trainer


def test_a_registered_task_is_recognised_and_logged(tmp_path):
    register_task(CornerTask)
    try:
        assert registered_tasks()[0] is CornerTask
        cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4)
        trainer = _fit(tmp_path, cb)
    finally:
        unregister_task("corner")
    assert CornerTask not in registered_tasks()
    assert cb.task.name == "corner"
    _, scalars = read_events(tmp_path / "tb")
    logged = [value for _, value in scalars[f"{PREFIX}/gradcam/corner_share"]]
    assert len(logged) == 2 and all(0.0 <= v <= 1.0 for v in logged)
    # the base task's scalars are still there, and everything is monitorable
    assert f"{PREFIX}/gradcam/energy_in_box" in scalars
    assert float(trainer.callback_metrics[f"{PREFIX}/gradcam/corner_share"]) == pytest.approx(
        logged[-1]
    )


def test_task_argument_names_the_task_without_registering_it(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4, task=CornerTask)
    _fit(tmp_path, cb)
    assert cb.task.name == "corner" and CornerTask not in registered_tasks()
    _, scalars = read_events(tmp_path / "tb")
    assert f"{PREFIX}/gradcam/corner_share" in scalars


def test_a_classifier_gets_the_classification_task(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4)
    _fit(tmp_path, cb)
    assert type(cb.task) is ClassificationTask


@pytest.mark.parametrize(
    ("task", "error", "message"),
    [
        ("detector", ValueError, "no task is called 'detector'; the tasks are 'detection'"),
        (42, TypeError, "task must be None, a task name or a CAMTask subclass"),
    ],
)
def test_bad_task_arguments_fail_in_init(task, error, message):
    with pytest.raises(error, match=message):
        GradCAMCallback(task=task)


def test_user_images_are_read_by_a_task_that_takes_them():
    with pytest.raises(ValueError, match=r"task 'segmentation' does not take images=\.\.\. "):
        GradCAMCallback(images=torch.rand(2, 3, 8, 8), task="segmentation")
    # task=None: the registered task that takes given images reads them
    assert GradCAMCallback(images=torch.rand(2, 3, 8, 8)).task.name == "classification"


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_named_task_refuses_options_it_would_ignore_when_the_callback_is_built(task):
    with pytest.raises(ValueError, match=f"target=3: .* leave target='auto' for the {task} task"):
        GradCAMCallback(task=task, target=3)
    # faithfulness is measured by the classification task only: refused, never dropped
    with pytest.raises(ValueError, match="faithfulness"):
        GradCAMCallback(task=task, faithfulness="deletion")


def test_methods_none_is_each_tasks_own_default():
    """Issue 26.6: Grad-CAM++ is not the default where its premise fails (a class's sum of
    logits over a region for segmenters; FPN features that are not ReLU outputs for
    detectors); an explicit methods= is always honoured."""
    from lightning_gradcam.tasks import DetectionTask, SegmentationTask

    assert ClassificationTask.default_methods == ("gradcam", "gradcam++")
    assert SegmentationTask.default_methods == ("gradcam", "hirescam")
    assert DetectionTask.default_methods == ("gradcam", "hirescam")
    cb = GradCAMCallback(task="segmentation")
    assert cb.methods == ()  # not known before the task is made (the fits of
    # tests/segmentation and tests/detection log the defaults' tags)
    assert GradCAMCallback(methods="gradcam++", task="segmentation").methods == ("gradcam++",)
