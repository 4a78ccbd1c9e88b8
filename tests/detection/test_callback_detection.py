"""GradCAMCallback() on a torchvision detector in a real Lightning fit: the detection task is
recognised by itself from the model and the (images, targets) batches, and the per-object
overlays, energy_in_box and drift land in the TensorBoard event files."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

from lightning_gradcam import GradCAMCallback
from lightning_gradcam.detection.shapes import DETECTION_CLASS_NAMES, shapes_detection_batch
from lightning_gradcam.tasks.detection import DetectionTask

LAYER = "model.roi_heads.box_roi_pool"


def _collate(items):
    return tuple(zip(*items))  # torchvision's (images, targets) of tuples


def _loader(seed: int, count: int, batch_size: int) -> DataLoader:
    images, targets = shapes_detection_batch(
        count, 96, seed=seed, num_objects=1, size_range=(40, 56)
    )
    return DataLoader(list(zip(images, targets)), batch_size=batch_size, collate_fn=_collate)


class DetectorModule(pl.LightningModule):
    """A LightningModule holding a torchvision detector as ``self.model``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = fasterrcnn_mobilenet_v3_large_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=len(DETECTION_CLASS_NAMES),
            min_size=96,
            max_size=96,
            box_score_thresh=0.0,
            rpn_post_nms_top_n_test=100,
            box_detections_per_img=20,
        )

    def training_step(self, batch, _index):
        images, targets = batch
        return sum(self.model(list(images), list(targets)).values())

    def validation_step(self, batch, _index):
        self.model(list(batch[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def _trainer(tmp_path, callbacks, max_epochs: int, limit_train_batches: int = 1):
    """A quiet CPU trainer (``cam_events.make_trainer``) that validates on one batch."""
    return make_trainer(
        pl,
        tmp_path,
        callbacks,
        max_epochs=max_epochs,
        limit_train_batches=limit_train_batches,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )


def test_fit_logs_per_object_overlays_energy_and_drift(tmp_path):
    callback = GradCAMCallback(num_samples=3, class_names=DETECTION_CLASS_NAMES)
    prefix = f"gradcam/{LAYER}"
    # A monitor on a detection scalar must find it at the first pass: a detector two steps
    # into training finds few objects, and their maps often have no positive evidence.
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor=f"{prefix}/gradcam++/energy_in_box", mode="max"
    )
    trainer = _trainer(tmp_path, [callback, checkpoint], max_epochs=2, limit_train_batches=2)
    module = DetectorModule()
    trainer.fit(module, _loader(0, 4, 2), _loader(7, 3, 3))

    assert isinstance(callback.task, DetectionTask)
    assert checkpoint.best_model_path  # the monitored scalar was there
    images, scalars = read_events(tmp_path / "tb")
    names = ("energy_in_box", "pointing_game", "found_rate", "no_evidence_rate")
    for method in ("gradcam", "gradcam++"):
        for number in range(3):  # one object per sample
            series = images[f"{prefix}/{method}/object_{number:02d}"]
            assert len(series) >= 2 and series[0][1].shape[0] > 0
        assert f"{prefix}/{method}/grid" in images
        passes = [step for step, _ in scalars[f"{prefix}/{method}/found_rate"]]
        assert len(passes) == 2
        for name in names:  # every scalar, every pass
            assert [step for step, _ in scalars[f"{prefix}/{method}/{name}"]] == passes, name
            assert f"{prefix}/{method}/{name}" in trainer.callback_metrics
        values = {name: dict(scalars[f"{prefix}/{method}/{name}"]) for name in names}
        for step in passes:
            found, empty = values["found_rate"][step], values["no_evidence_rate"][step]
            # a missed object and a map without evidence count 0: energy and hits can only
            # come from the found objects with evidence
            ceiling = found * (1.0 - empty) + 1e-6
            assert 0.0 <= values["energy_in_box"][step] <= ceiling
            assert 0.0 <= values["pointing_game"][step] <= ceiling
    strip = callback.filmstrip("gradcam")
    assert strip.dtype == np.uint8 and strip.ndim == 3
    assert module.model.training  # given back in train mode


def test_a_batch_without_boxes_stops_the_fit_with_a_clear_message(tmp_path):
    images, _ = shapes_detection_batch(2, 96, seed=3)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    loader = DataLoader(list(zip(images, empty)), batch_size=2, collate_fn=_collate)
    trainer = _trainer(tmp_path, [GradCAMCallback(num_samples=2)], max_epochs=1)
    with pytest.raises(ValueError, match="no image of the batch has a ground-truth box"):
        trainer.fit(DetectorModule(), _loader(0, 2, 2), loader)


def test_model_names_the_detector_as_for_classifiers(tmp_path):
    callback = GradCAMCallback(
        model="model", layer="backbone.body.13", methods=("hirescam",), num_samples=2
    )
    trainer = _trainer(tmp_path, [callback], max_epochs=1)
    trainer.fit(DetectorModule(), _loader(0, 2, 2), _loader(7, 2, 2))
    images, scalars = read_events(tmp_path / "tb")
    # Tags name the layer relative to the module explained: the detector itself here.
    assert {
        "gradcam/backbone.body.13/hirescam/object_00",
        "gradcam/backbone.body.13/hirescam/grid",
    } <= set(images)
    assert "gradcam/backbone.body.13/hirescam/found_rate" in scalars


def _fit_weights(tmp_path, callbacks) -> dict[str, torch.Tensor]:
    trainer = _trainer(tmp_path, callbacks, max_epochs=2)
    module = DetectorModule()
    trainer.fit(module, _loader(0, 4, 2), _loader(7, 2, 2))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_training_with_the_callback_gives_bit_identical_weights(tmp_path):
    _fit_weights(tmp_path / "warm", [])  # first-call effects out of the way
    plain = _fit_weights(tmp_path / "plain", [])
    watched = _fit_weights(tmp_path / "cam", [GradCAMCallback(num_samples=2)])
    assert plain.keys() == watched.keys()
    assert all(torch.equal(plain[k], watched[k]) for k in plain)
    assert glob.glob(str(tmp_path / "cam" / "**" / "events.out.tfevents.*"), recursive=True)
