"""GradCAMCallback leaves training untouched, resumes, and copes with unusual setups."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events, steps
from cam_tiny import LAYER, STEPS_PER_EPOCH, TinyPL, val_loader

from lightning_gradcam import GradCAMCallback

pytestmark = pytest.mark.timeout(120)
PREFIX = f"gradcam/{LAYER}"


def _train(root, callbacks, **kwargs):
    pl.seed_everything(123, verbose=False)
    module = TinyPL(**{k: kwargs.pop(k) for k in ("freeze", "compile_net") if k in kwargs})
    trainer = make_trainer(pl, root, callbacks, **kwargs)
    trainer.fit(module, val_dataloaders=val_loader())
    return module, trainer


def test_weights_bit_identical_with_and_without_the_callback(tmp_path):
    # BatchNorm and dropout in the model, shuffled training data: an RNG draw, a BN update
    # or a .grad write by the CAM pass would change the weights.
    _train(tmp_path / "warmup", [], max_epochs=1)  # first-call effects out of the way
    plain, _ = _train(tmp_path / "plain", [], max_epochs=2)
    cb = GradCAMCallback(layer=LAYER, methods=("gradcam", "gradcam++", "guided_gradcam"))
    watched, _ = _train(tmp_path / "watched", [cb], max_epochs=2)
    # the callback really ran, twice, between the training epochs
    assert len(cb.history) == 2 and cb.state_dict()["cam_count"] == 2
    a, b = plain.state_dict(), watched.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"
    assert int(b["net.features.block1.1.num_batches_tracked"]) == 2 * STEPS_PER_EPOCH


def test_resume_from_checkpoint_continues_the_drift_series(tmp_path):
    cb1 = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4)
    module, trainer = _train(tmp_path, [cb1], max_epochs=2, version=0)
    ckpt = tmp_path / "two_epochs.ckpt"
    trainer.save_checkpoint(ckpt)

    cb2 = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4)
    trainer2 = make_trainer(pl, tmp_path, [cb2], max_epochs=4, version=1)
    trainer2.fit(TinyPL(), val_dataloaders=val_loader(), ckpt_path=str(ckpt))

    saved, resumed_state = cb1.state_dict(), cb2.state_dict()
    assert torch.equal(resumed_state["samples"]["images"], saved["samples"]["images"])
    assert torch.equal(resumed_state["first_maps"]["gradcam"], saved["first_maps"]["gradcam"])
    images, scalars = read_events(tmp_path / "tb" / "version_1")
    resumed = [STEPS_PER_EPOCH * 3, STEPS_PER_EPOCH * 4]
    assert steps(images[f"{PREFIX}/gradcam/sample_03"]) == resumed
    assert f"{PREFIX}/inputs" not in images  # logged once, by the first run
    # drift vs the previous epoch exists at the first resumed CAM: the saved maps were loaded
    assert steps(scalars[f"{PREFIX}/gradcam/drift_vs_prev"]) == resumed
    assert steps(scalars[f"{PREFIX}/gradcam/drift_vs_first"]) == resumed
    before, _ = read_events(tmp_path / "tb" / "version_0")
    assert steps(before[f"{PREFIX}/gradcam/sample_03"]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_frozen_backbone(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods=("gradcam", "layercam"), num_samples=4)
    module, _ = _train(tmp_path, [cb], max_epochs=1, freeze=True)
    assert not any(p.requires_grad for p in module.net.features.parameters())
    assert all(p.grad is None for p in module.net.features.parameters())
    latest = cb.state_dict()["prev_maps"]
    for method in ("gradcam", "layercam"):
        assert latest[method].amax(dim=(1, 2)).gt(0).any(), f"{method} maps are all zero"


def test_bf16_mixed_precision(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam++", num_samples=4)
    _train(tmp_path, [cb], max_epochs=2, precision="bf16-mixed")
    maps = cb.state_dict()["prev_maps"]["gradcam++"]
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert maps.amax(dim=(1, 2)).gt(0).all()
    images, scalars = read_events(tmp_path / "tb")
    assert steps(images[f"{PREFIX}/gradcam++/grid"]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert f"{PREFIX}/gradcam++/drift_vs_prev" in scalars


def test_compiled_submodule(tmp_path):
    # The layer is named as in the plain module; compile's _orig_mod is looked through.
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4)
    module, _ = _train(tmp_path, [cb], max_epochs=1, compile_net=True)
    assert hasattr(module.net, "_orig_mod")
    assert len(cb.history) == 1
    assert cb.state_dict()["prev_maps"]["gradcam"].amax(dim=(1, 2)).gt(0).any()


def test_prediction_target_is_fixed_at_the_first_cam_epoch(tmp_path, monkeypatch):
    from lightning_gradcam import engine as callback_module

    calls = []
    explain = callback_module.CAMEngine.explain

    def spy(self, images, targets=None):
        result = explain(self, images, targets)
        calls.append((targets, result.class_ids[:, 0].clone()))
        return result

    monkeypatch.setattr(callback_module.CAMEngine, "explain", spy)
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=8, target="prediction")
    _train(tmp_path, [cb], max_epochs=3)
    assert len(calls) == 4  # the unlogged trial pass after the sanity check, then 3 epochs
    trial, calls = calls[0], calls[1:]
    assert trial[0] is None  # the trial fixes nothing
    assert calls[0][0] is None  # the first CAM epoch explains the prediction (not the labels)
    first_prediction = calls[0][1]
    for targets, explained in calls[1:]:
        assert torch.equal(torch.as_tensor(targets), first_prediction)
        assert torch.equal(explained, first_prediction)


def test_callable_and_fixed_class_targets(tmp_path):
    by_fn = GradCAMCallback(
        layer=LAYER, methods="gradcam", num_samples=2, target=lambda out: out[:, 1], tag_prefix="fn"
    )
    by_id = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2, target=2)
    _train(tmp_path, [by_fn, by_id], max_epochs=1)
    assert by_id.state_dict()["targets"].tolist() == [2, 2]
    assert by_fn.state_dict()["targets"] is None  # a callable is the target itself
    images, _ = read_events(tmp_path / "tb")
    assert f"fn/{LAYER}/gradcam/sample_01" in images
