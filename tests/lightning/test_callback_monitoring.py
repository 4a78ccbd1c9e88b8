"""Attention as a training signal: the callback's scalars in ``trainer.callback_metrics``,
monitored by Lightning's own ``ModelCheckpoint`` and ``EarlyStopping``, and the alarm."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events
from cam_tiny import LAYER, TinyPL, val_loader
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from lightning_gradcam import GradCAMCallback

pytestmark = pytest.mark.timeout(180)

ENERGY = f"gradcam/{LAYER}/gradcam/energy_in_box"
POINTING = f"gradcam/{LAYER}/gradcam/pointing_game"


def _fit(tmp_path, callbacks, **kwargs):
    torch.manual_seed(0)
    trainer = make_trainer(pl, tmp_path, callbacks, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyPL(), val_dataloaders=val_loader())
    return trainer, [str(w.message) for w in caught if "GradCAMCallback" in str(w.message)]


def test_model_checkpoint_keeps_the_epoch_with_the_most_energy_in_the_box(tmp_path):
    cam = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=8)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=ENERGY, mode="max", save_top_k=1)
    trainer, _ = _fit(tmp_path, [cam, best], max_epochs=3, enable_checkpointing=True)
    # The same values as logged: one per validation epoch (the final pass is at the same
    # step as the last epoch's, so it is not repeated).
    _, scalars = read_events(tmp_path / "tb")
    logged = [value for _, value in scalars[ENERGY]]
    assert len(logged) == 3
    assert float(best.best_model_score) == pytest.approx(max(logged), abs=1e-6)
    assert float(trainer.callback_metrics[ENERGY]) == pytest.approx(logged[-1], abs=1e-6)
    assert float(trainer.callback_metrics[POINTING]) == pytest.approx(
        cam.history[-1]["scalars"]["gradcam"]["pointing_game"]
    )


def test_early_stopping_stops_on_a_callback_scalar_at_the_same_epoch(tmp_path):
    cam = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=8)
    # Any energy reaches the threshold 0: the run must stop after the first validation
    # epoch, which it can only do if the scalar is there when EarlyStopping looks.
    stop = EarlyStopping(monitor=ENERGY, mode="max", stopping_threshold=0.0, patience=10)
    trainer, _ = _fit(tmp_path, [cam, stop], max_epochs=5)
    assert trainer.current_epoch == 1 and stop.stopped_epoch == 0
    assert len(cam.history) == 1


def test_early_stopping_without_the_callback_finds_no_such_metric(tmp_path):
    # The reference: the monitored name exists only because the callback put it there.
    stop = EarlyStopping(monitor=ENERGY, mode="max", stopping_threshold=0.0)
    with pytest.raises(RuntimeError, match="not available"):
        _fit(tmp_path, [stop], max_epochs=2)


def test_alarm_warns_once_naming_the_samples_below_the_floor(tmp_path):
    cam = GradCAMCallback(
        layer=LAYER, methods="gradcam", num_samples=4, alarm={"energy_in_box": 1.01}
    )
    _, ours = _fit(tmp_path, [cam], max_epochs=3)
    alarms = [m for m in ours if "alarm" in m]
    assert len(alarms) == 1, alarms  # once, though every epoch is below the floor
    assert ENERGY in alarms[0] and "epoch 0" in alarms[0]
    assert "samples below it: 0 (" in alarms[0] and "3 (" in alarms[0]


def test_alarm_is_quiet_before_its_epoch_and_above_its_floor(tmp_path):
    quiet = GradCAMCallback(
        layer=LAYER,
        methods="gradcam",
        num_samples=4,
        alarm={"energy_in_box": 1.01},
        alarm_after_epoch=5,
    )
    above = GradCAMCallback(
        layer=LAYER,
        methods="gradcam",
        num_samples=4,
        alarm={"gradcam/energy_in_box": -1.0},
        tag_prefix="other",
    )
    _, ours = _fit(tmp_path, [quiet, above], max_epochs=2)
    assert not [m for m in ours if "alarm" in m]


@pytest.mark.parametrize(
    ("alarm", "message"),
    [
        (0.3, "alarm must be a mapping"),
        ({"energy_in_box": "low"}, "must be a finite number"),
        ({"": 0.3}, "alarm keys must be scalar names"),
    ],
)
def test_bad_alarms_fail_in_init(alarm, message):
    with pytest.raises((TypeError, ValueError), match=message):
        GradCAMCallback(alarm=alarm)
