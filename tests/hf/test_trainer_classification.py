"""GradCAMTrainerCallback in real transformers Trainer runs on a tiny random ViT: event files,
eval metrics in log_history, best-checkpoint selection and early stopping on its scalar."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402
from cam_events import read_events, steps  # noqa: E402
from hf_tiny import Squares, tiny_vit, training_args  # noqa: E402

from lightning_gradcam import GradCAMTrainerCallback  # noqa: E402

pytestmark = pytest.mark.timeout(240)
LAYER = "vit.layers.0"


def _fit(tmp_path, callbacks, **kwargs):
    transformers.set_seed(0)
    model = tiny_vit()
    trainer = transformers.Trainer(
        model=model,
        args=training_args(tmp_path, **kwargs),
        train_dataset=Squares(32, seed=1),
        eval_dataset=Squares(8, seed=2),
        callbacks=callbacks,
    )
    trainer.train()
    return trainer, model


def test_logs_to_the_trainers_run_and_metrics(tmp_path):
    cb = GradCAMTrainerCallback(methods=("gradcam",), num_samples=4)
    trainer, _ = _fit(tmp_path, [cb])
    key = f"eval_gradcam/{cb._layer()}/gradcam/energy_in_box"
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 2
    assert all(0.0 <= e[key] <= 1.0 for e in evals)
    assert f"eval_gradcam/{cb._layer()}/gradcam/drift_vs_first" in evals[1]  # from the 2nd
    images, scalars = read_events(cb.log_dir)
    tag = f"gradcam/{cb._layer()}/gradcam"
    assert "eval/loss" in scalars  # the Trainer's own run
    assert steps(scalars[f"{tag}/energy_in_box"]) == [e["step"] for e in evals]
    assert [v for _, v in scalars[f"{tag}/energy_in_box"]] == pytest.approx([e[key] for e in evals])
    assert len(images[f"{tag}/grid"]) == 2
    assert f"{tag}/sample_00" in images
    assert cb.filmstrip().shape[1] > cb.filmstrip().shape[0] // 4


def test_training_is_bit_identical_and_leaves_no_hooks(tmp_path):
    _, plain = _fit(tmp_path / "a", [])
    cb = GradCAMTrainerCallback(methods=("gradcam", "gradcam++"), num_samples=4)
    _, watched = _fit(tmp_path / "b", [cb])
    assert cb.history
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    # No hooks beyond transformers' own (it installs output-capturing hooks, once, the
    # first time hidden states are asked for: the default layer's lookup asks).
    assert _hooks(watched) == _hooks(plain)


def _hooks(model):
    return [
        sorted(
            getattr(h, "__qualname__", type(h).__name__)
            for h in hooks.values()
            if not getattr(h, "__module__", "").startswith("transformers.")
        )
        for module in model.modules()
        for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
    ]


def test_selects_the_best_checkpoint_and_stops_on_a_callback_scalar(tmp_path):
    cb = GradCAMTrainerCallback(layer=LAYER, methods=("gradcam",), num_samples=4)
    metric = f"gradcam/{LAYER}/gradcam/energy_in_box"
    stop = transformers.EarlyStoppingCallback(early_stopping_patience=1)
    trainer, _ = _fit(
        tmp_path,
        [stop, cb],  # the early stopper first: it must still see the callback's scalar
        num_train_epochs=8,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        save_total_limit=None,
    )
    evals = [e for e in trainer.state.log_history if f"eval_{metric}" in e]
    values = [e[f"eval_{metric}"] for e in evals]
    best = max(range(len(values)), key=lambda i: (values[i], -i))
    assert trainer.state.best_metric == pytest.approx(values[best])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{evals[best]['step']}")
    # Early stopping: patience 1 means the run ended at the first evaluation that did not
    # improve on the best, long before 8 epochs (32 steps).
    assert trainer.state.global_step < 32
    assert values[-1] <= max(values[:-1])


def test_bad_layer_fails_before_training(tmp_path):
    cb = GradCAMTrainerCallback(layer="vit.layrs.0", methods=("gradcam",))
    with pytest.raises(Exception, match="layr"):
        _fit(tmp_path, [cb])
    assert not list(tmp_path.glob("checkpoint-*"))


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="num_samples"):
        GradCAMTrainerCallback(num_samples=0)
    with pytest.raises(ValueError, match="method"):
        GradCAMTrainerCallback(methods=("gradcamm",))
    with pytest.raises(ValueError, match="images"):
        GradCAMTrainerCallback(labels=[0, 1])


def test_no_samples_fails_before_training_saying_what_to_pass(tmp_path):
    transformers.set_seed(0)
    trainer = transformers.Trainer(
        model=tiny_vit(),
        args=training_args(tmp_path, eval_strategy="no"),
        train_dataset=Squares(16, seed=1),
        callbacks=[GradCAMTrainerCallback(methods=("gradcam",))],
    )
    with pytest.raises(ValueError, match="eval_dataset .* or pass images="):
        trainer.train()
    assert trainer.state.global_step == 0
