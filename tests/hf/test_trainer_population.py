"""GradCAMTrainerCallback(metrics_on="evaluation") in real transformers Trainer runs: the
logged scalars are the means over every item of the evaluated set, computed by hand here;
keys are there at every evaluation, on TensorBoard too; training is untouched; bad sets fail
before the first step."""

from __future__ import annotations

import math

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402
from cam_events import read_events, steps  # noqa: E402
from hf_tiny import (  # noqa: E402
    Squares,
    tiny_segformer,
    tiny_vit,
    training_args,
    whole_set_by_hand,
)
from torch.utils.data import IterableDataset  # noqa: E402

from lightning_gradcam import GradCAMTrainerCallback  # noqa: E402

pytestmark = pytest.mark.timeout(240)
NAMES = ("energy_in_box", "pointing_game", "no_evidence_rate")


def _fit(tmp_path, callbacks, eval_dataset, model=None, dropout=0.0, **kwargs):
    transformers.set_seed(0)
    model = tiny_vit(dropout) if model is None else model
    trainer = transformers.Trainer(
        model=model,
        args=training_args(tmp_path, **kwargs),
        train_dataset=Squares(32, seed=1),
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )
    trainer.train()
    return trainer, model


def _evals(trainer, key="eval_loss"):
    return [e for e in trainer.state.log_history if key in e]


def test_logged_means_are_those_over_every_item_computed_by_hand(tmp_path):
    evaluated = Squares(20, seed=2)
    cb = GradCAMTrainerCallback(methods=("gradcam",), num_samples=4, metrics_on="evaluation")
    trainer, model = _fit(tmp_path, [cb], evaluated, per_device_eval_batch_size=8)
    layer = cb._layer()
    evals = _evals(trainer)
    assert len(evals) == 2 and cb.whole_set.images == 20  # 8 + 8 + 4: the last batch too
    # The final evaluation ran on the final weights: the means over all 20 items by hand.
    want = whole_set_by_hand(model, evaluated, layer)
    for name in NAMES:
        assert evals[-1][f"eval_gradcam/{layer}/gradcam/{name}"] == pytest.approx(
            want[name], rel=1e-5, abs=1e-7
        )
    # Over 20 items the pointing game moves in steps of 1/20, not of 1/4 (the samples).
    hits = [e[f"eval_gradcam/{layer}/gradcam/pointing_game"] * 20 for e in evals]
    assert all(h == pytest.approx(round(h)) for h in hits)
    # The same keys at every evaluation; drift stays the fixed samples'.
    ours = [sorted(k for k in e if k.startswith("eval_gradcam/")) for e in evals]
    assert ours[0] == ours[1] and len(ours[0]) == 6
    assert math.isnan(evals[0][f"eval_gradcam/{layer}/gradcam/drift_vs_first"])
    # TensorBoard: the whole-set values, once per evaluation (not the samples' as well).
    _, scalars = read_events(cb.log_dir)
    for name in NAMES:
        series = scalars[f"gradcam/{layer}/gradcam/{name}"]
        assert steps(series) == [e["step"] for e in evals]
        assert [v for _, v in series] == pytest.approx(
            [e[f"eval_gradcam/{layer}/gradcam/{name}"] for e in evals], rel=1e-6
        )


def test_metrics_batches_measures_the_first_batches(tmp_path):
    evaluated = Squares(20, seed=2)
    cb = GradCAMTrainerCallback(
        methods=("gradcam",), num_samples=4, metrics_on="evaluation", metrics_batches=1
    )
    trainer, model = _fit(tmp_path, [cb], evaluated, per_device_eval_batch_size=6)
    assert cb.whole_set.images == 6
    want = whole_set_by_hand(model, evaluated, cb._layer(), count=6)
    last = _evals(trainer)[-1]
    for name in NAMES:
        assert last[f"eval_gradcam/{cb._layer()}/gradcam/{name}"] == pytest.approx(
            want[name], rel=1e-5, abs=1e-7
        )


def test_training_and_the_trainers_metrics_are_untouched(tmp_path):
    """With dropout, so that a random draw of the measure would show in the weights."""
    plain, plain_model = _fit(tmp_path / "plain", [], Squares(12, seed=2), dropout=0.2)
    cb = GradCAMTrainerCallback(methods=("gradcam",), num_samples=4, metrics_on="evaluation")
    measured, model = _fit(tmp_path / "measured", [cb], Squares(12, seed=2), dropout=0.2)
    for name, value in plain_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert [e["eval_loss"] for e in _evals(plain)] == [e["eval_loss"] for e in _evals(measured)]
    losses = [(e["step"], e["loss"]) for e in plain.state.log_history if "loss" in e]
    assert losses == [(e["step"], e["loss"]) for e in measured.state.log_history if "loss" in e]


def test_each_of_several_eval_sets_gets_its_own_means(tmp_path):
    sets = {"near": Squares(8, seed=2), "far": Squares(12, seed=5)}
    cb = GradCAMTrainerCallback(methods=("gradcam",), num_samples=4, metrics_on="evaluation")
    trainer, model = _fit(tmp_path, [cb], sets)
    layer = cb._layer()
    _, scalars = read_events(cb.log_dir)
    for name, dataset in sets.items():
        last = _evals(trainer, f"eval_{name}_loss")[-1]
        want = whole_set_by_hand(model, dataset, layer)
        for metric in NAMES:
            key = f"eval_{name}_gradcam/{layer}/gradcam/{metric}"
            assert last[key] == pytest.approx(want[metric], rel=1e-5, abs=1e-7)
            assert scalars[f"gradcam_{name}/{layer}/gradcam/{metric}"][-1][1] == pytest.approx(
                last[key], rel=1e-6
            )


def test_segmentation_measures_every_image_and_each_class_of_the_set(tmp_path):
    evaluated = Squares(10, seed=2, segmentation=True)
    cb = GradCAMTrainerCallback(methods=("gradcam",), num_samples=3, metrics_on="evaluation")
    trainer = _fit_segmentation(tmp_path, cb, evaluated)
    layer = cb._layer()
    evals = _evals(trainer)
    assert cb.whole_set.images == 10
    ours = [sorted(k for k in e if k.startswith("eval_gradcam/")) for e in evals]
    assert ours[0] == ours[1]
    # Class 1 (label 0 + 1) is in the set but not among the 3 fixed samples: its per-class
    # scalars are there because the whole set is measured.
    samples_classes = {int(c) + 1 for c in evaluated.labels[:3]}
    set_classes = {int(c) + 1 for c in evaluated.labels}
    assert set_classes - samples_classes == {1}
    for c in set_classes:
        for name in ("energy_in_mask", "pointing_game", "no_evidence_rate"):
            value = evals[-1][f"eval_gradcam/{layer}/gradcam/class_{c:02d}/{name}"]
            assert 0.0 <= value <= 1.0
    # (These tiny random segmenters still predict background everywhere after a few steps,
    # so their maps carry no positive evidence: tests/segmentation checks the values.)


def _fit_segmentation(tmp_path, cb, evaluated):
    transformers.set_seed(0)
    model = tiny_segformer()
    trainer = transformers.Trainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=Squares(16, seed=1, segmentation=True),
        eval_dataset=evaluated,
        callbacks=[cb],
    )
    trainer.train()
    return trainer


class _NoBoxes(Squares):
    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {k: v for k, v in item.items() if k != "boxes"}


class _Streamed(IterableDataset):
    def __iter__(self):
        return iter(Squares(8, seed=2))


@pytest.mark.parametrize(
    "evaluated, given, message",
    [
        (_NoBoxes(8, seed=2), {}, "no boxes or masks"),
        (_Streamed(), {"images": Squares(4, seed=2).images}, "has no len()"),
        (
            {"near": Squares(8, seed=2), "far": _NoBoxes(8, seed=2)},
            {},
            r"eval_dataset\['far'\].*no boxes or masks",
        ),
    ],
)
def test_a_set_it_cannot_measure_fails_before_the_first_step(tmp_path, evaluated, given, message):
    cb = GradCAMTrainerCallback(methods=("gradcam",), metrics_on="evaluation", **given)
    steps_taken = []

    class Steps(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_taken.append(state.global_step)

    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, [cb, Steps()], evaluated)
    assert steps_taken == []  # refused before the first training step


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metrics_on": "validation"}, "'samples'.*or 'evaluation'"),
        ({"metrics_batches": 2}, "pass metrics_on='evaluation' too"),
        ({"metrics_on": "evaluation", "metrics_batches": 0}, "positive integer"),
        ({"metrics_on": "evaluation", "target": torch.tensor([0, 1])}, "one class id per"),
    ],
)
def test_bad_options_fail_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradCAMTrainerCallback(**kwargs)
