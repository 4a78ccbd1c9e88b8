"""GradCAMCallback(faithfulness=...): scalars in the event files, training left untouched."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events, steps
from cam_tiny import LAYER, STEPS_PER_EPOCH, TinyPL, val_loader

from lightning_gradcam import GradCAMCallback

pytestmark = pytest.mark.timeout(120)
PREFIX = f"gradcam/{LAYER}"
METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence")
SCALARS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
RANGES = {"deletion_auc": 1, "insertion_auc": 1, "average_drop": 100, "increase_in_confidence": 100}


def _train(root, callbacks, **kwargs):
    pl.seed_everything(123, verbose=False)
    module = TinyPL()
    trainer = make_trainer(pl, root, callbacks, **kwargs)
    trainer.fit(module, val_dataloaders=val_loader())
    return module


def test_faithfulness_scalars_are_logged_and_training_is_bit_identical(tmp_path):
    _train(tmp_path / "warmup", [], max_epochs=1)  # first-call effects out of the way
    plain = _train(tmp_path / "plain", [], max_epochs=2)
    methods = ("gradcam", "gradcam++")
    cb = GradCAMCallback(layer=LAYER, methods=methods, num_samples=8, faithfulness=METRICS)
    watched = _train(tmp_path / "watched", [cb], max_epochs=2)

    a, b = plain.state_dict(), watched.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"

    _, scalars = read_events(tmp_path / "watched" / "tb")
    cam_steps = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for method in (*methods, "random"):
        for name in SCALARS:
            tag = f"{PREFIX}/{method}/{name}"
            assert steps(scalars[tag]) == cam_steps, tag
            for (_, value), entry in zip(scalars[tag], cb.history):
                assert math.isfinite(value) and 0 <= value <= RANGES[name], (tag, value)
                assert value == pytest.approx(entry["scalars"][method][name], rel=1e-6)
    # the random reference is the same seeded map every epoch, so its numbers move only
    # with the model; a CAM's numbers are its own
    assert cb.history[-1]["scalars"]["random"] != cb.history[-1]["scalars"]["gradcam"]


def test_without_faithfulness_nothing_is_logged(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2)
    _train(tmp_path, [cb], max_epochs=1)
    _, scalars = read_events(tmp_path / "tb")
    assert not [tag for tag in scalars if "auc" in tag or "/random/" in tag]


def test_unknown_metrics_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"unknown faithfulness metric\(s\) \['auc'\]"):
        GradCAMCallback(faithfulness=("deletion", "auc"))
    with pytest.raises(TypeError, match="faithfulness metrics must be a sequence"):
        GradCAMCallback(faithfulness=3)
    assert GradCAMCallback(faithfulness="deletion").options.faithfulness == ("deletion",)
