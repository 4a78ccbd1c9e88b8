"""GradCAMCallback(metrics_on="validation") in real Lightning fits: the logged scalars are
the means over every validation image, computed by hand here; keys are there at every
pass; training and the module's own validation metrics are untouched; bad options fail
before training."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events, steps
from cam_tiny import LAYER, STEPS_PER_EPOCH, TinyPL, val_loader
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradcam import CAMEngine, GradCAMCallback
from lightning_gradcam.core.drift import box_masks, energy_share, pointing_hits

pytestmark = pytest.mark.timeout(300)
PREFIX = f"gradcam/{LAYER}/gradcam"
VAL_IMAGES, VAL_BATCH = 24, 8


def _fit(root, callbacks, **kwargs):
    pl.seed_everything(123, verbose=False)
    module = TinyPL()
    trainer = make_trainer(pl, root, callbacks, **kwargs)
    trainer.fit(module, val_dataloaders=val_loader(VAL_IMAGES, VAL_BATCH))
    return module, trainer


def _by_hand(module, count=VAL_IMAGES) -> dict[str, float]:
    """The three scalars over the first ``count`` validation images, from the module's
    final weights: no positive evidence counts 0 energy and no hit."""
    data = val_loader(VAL_IMAGES, VAL_BATCH).dataset.data
    images, labels, boxes = data.images[:count], data.labels[:count], data.boxes[:count]
    module.eval()
    res = CAMEngine(module, layer=LAYER, methods=("gradcam",)).explain(images, targets=labels)
    maps = res.maps["gradcam"][:, 0].float()
    evidence = res.layer_maps["gradcam"][:, 0].flatten(1).amax(1) > 0
    region = box_masks(boxes, tuple(images.shape[-2:]))
    energy = torch.where(evidence, energy_share(maps, region), 0.0)
    hits = pointing_hits(maps, region) & evidence
    return {
        f"{PREFIX}/energy_in_box": float(energy.mean()),
        f"{PREFIX}/pointing_game": float(hits.float().mean()),
        f"{PREFIX}/no_evidence_rate": float((~evidence).float().mean()),
    }


def _logged(trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(PREFIX)}


def test_whole_set_means_equal_a_computation_by_hand_and_training_is_untouched(tmp_path):
    _fit(tmp_path / "warmup", [], max_epochs=1)  # first-call effects out of the way
    plain, plain_trainer = _fit(tmp_path / "plain", [], max_epochs=2)
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation")
    watched, trainer = _fit(tmp_path / "watched", [cb], max_epochs=2)

    a, b = plain.state_dict(), watched.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"
    assert float(plain_trainer.callback_metrics["val_loss"]) == float(
        trainer.callback_metrics["val_loss"]
    )

    want = _by_hand(watched)
    got = _logged(trainer)
    for tag, value in want.items():
        assert math.isclose(got[tag], value, rel_tol=1e-5, abs_tol=1e-7), (tag, got[tag], value)
    assert cb.whole_set.images == VAL_IMAGES  # all three batches, not the 8 samples

    # The same tags at every pass, in the event files; pictures stay on the fixed samples.
    images, scalars = read_events(tmp_path / "watched" / "tb")
    for tag in want:
        assert steps(scalars[tag]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH], tag
        assert math.isclose(scalars[tag][-1][1], want[tag], rel_tol=1e-5, abs_tol=1e-6)
    assert f"{PREFIX}/sample_07" in images and f"{PREFIX}/sample_08" not in images
    assert f"{PREFIX}/drift_vs_prev" in scalars


def test_it_equals_the_sample_path_on_the_same_images(tmp_path):
    # The first batch both ways: the fixed samples are the sanity check's batch (8 images).
    whole = GradCAMCallback(
        layer=LAYER, methods="gradcam", metrics_on="validation", metrics_batches=1
    )
    _, trainer = _fit(tmp_path / "whole", [whole], max_epochs=1)
    samples = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=VAL_BATCH)
    _, sample_trainer = _fit(tmp_path / "samples", [samples], max_epochs=1)
    got, want = _logged(trainer), _logged(sample_trainer)
    for tag in _by_hand(TinyPL()):
        assert math.isclose(got[tag], want[tag], rel_tol=1e-5, abs_tol=1e-7), tag


@pytest.mark.parametrize(
    "options, fit_options, count",
    [
        ({"metrics_batches": 1}, {"limit_val_batches": 2}, VAL_BATCH),
        ({}, {"limit_val_batches": 2}, 2 * VAL_BATCH),
    ],
)
def test_metrics_batches_and_limit_val_batches(tmp_path, options, fit_options, count):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation", **options)
    module, trainer = _fit(tmp_path, [cb], max_epochs=1, **fit_options)
    want, got = _by_hand(module, count), _logged(trainer)
    for tag, value in want.items():
        assert math.isclose(got[tag], value, rel_tol=1e-5, abs_tol=1e-7), tag
    assert cb.whole_set.images == count


def test_every_n_epochs_measures_only_the_epochs_explained(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation", every_n_epochs=2)
    module, trainer = _fit(tmp_path, [cb], max_epochs=2)
    _, scalars = read_events(tmp_path / "tb")
    assert steps(scalars[f"{PREFIX}/energy_in_box"]) == [2 * STEPS_PER_EPOCH]
    got = _logged(trainer)
    for tag, value in _by_hand(module).items():  # epoch 1's batches were not added
        assert math.isclose(got[tag], value, rel_tol=1e-5, abs_tol=1e-7), tag


@pytest.mark.parametrize("sanity", [1, 0])
def test_batches_without_boxes_fail_before_training(tmp_path, sanity):
    data = val_loader(VAL_IMAGES, VAL_BATCH).dataset.data
    loader = DataLoader(TensorDataset(data.images, data.labels), batch_size=VAL_BATCH)
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation")
    module = TinyPL()
    trainer = make_trainer(pl, tmp_path, [cb], max_epochs=1, num_sanity_val_steps=sanity)
    with pytest.raises(ValueError, match="carry no boxes or masks"):
        trainer.fit(module, val_dataloaders=loader)
    assert module.train_steps == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metrics_on": "all"}, "metrics_on must be 'samples'"),
        ({"metrics_on": "validation", "metrics_batches": 0}, "positive integer"),
        ({"metrics_batches": 2}, "pass metrics_on='validation' too"),
        ({"metrics_on": "validation", "target": [0, 1]}, "one class id per fixed sample"),
    ],
)
def test_bad_options_fail_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradCAMCallback(**kwargs)
