"""GradCAMTrainerCallback on tiny random SegFormer and UperNet (ConvNeXt backbone) in real
Trainer runs, and a failed pass that warns and lets the run go on."""

from __future__ import annotations

import math

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402
from cam_events import read_events  # noqa: E402
from hf_tiny import Squares, tiny_segformer, tiny_upernet, tiny_vit, training_args  # noqa: E402

from lightning_gradcam import GradCAMTrainerCallback  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("make", [tiny_segformer, tiny_upernet], ids=["segformer", "upernet"])
def test_segmenter_maps_and_metrics(tmp_path, make):
    transformers.set_seed(0)
    cb = GradCAMTrainerCallback(methods=("gradcam", "hirescam"), num_samples=2)
    trainer = transformers.Trainer(
        model=make(),
        args=training_args(tmp_path, num_train_epochs=2),
        train_dataset=Squares(16, seed=1, segmentation=True),
        eval_dataset=Squares(4, seed=2, segmentation=True),
        callbacks=[cb],
    )
    trainer.train()
    assert cb.task.name == "segmentation"
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    keys = [sorted(k for k in e if k.startswith("eval_gradcam/")) for e in evals]
    assert len(evals) == 2 and keys[0] == keys[1]  # the same keys at every evaluation
    last = evals[-1]
    ours = {k: v for k, v in last.items() if k.startswith("eval_gradcam/")}
    # A random segmenter may show no positive evidence for a class: it counts 0 energy and
    # no hit, and no_evidence_rate, logged for each method, says why.
    for method in ("gradcam", "hirescam"):
        assert f"eval_gradcam/{cb._layer()}/{method}/no_evidence_rate" in ours, sorted(ours)
    assert all(0.0 <= v <= 1.0 for k, v in ours.items() if "rate" in k or "energy" in k)
    images, scalars = read_events(cb.log_dir)
    assert any(t.startswith(f"gradcam/{cb._layer()}/hirescam/image_00_class_") for t in images)
    for name in ("energy_in_mask", "pointing_game", "no_evidence_rate"):
        assert f"eval_gradcam/{cb._layer()}/gradcam/{name}" in ours, sorted(ours)
    for key, value in ours.items():
        if math.isnan(value):  # not measurable (drift at the first pass): metric only
            assert key.endswith(("drift_vs_prev", "drift_vs_first")), key
            assert key[len("eval_") :] not in scalars
        elif not key.endswith("skipped_passes"):  # written when a pass fails
            assert scalars[key[len("eval_") :]][-1][1] == pytest.approx(value)


def test_a_failed_pass_warns_and_the_run_goes_on(tmp_path):
    """The pass fails at every evaluation while the Trainer selects and stops on the
    callback's scalar: the keys are still there (NaN, never a best), so nothing ends the run."""
    transformers.set_seed(0)
    calls = {"n": 0}

    def target(output):  # fine for the trial pass, then fails
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom in the target")
        return output.logits[:, :1]

    cb = GradCAMTrainerCallback(methods=("gradcam",), num_samples=2, target=target)
    metric = "gradcam/vit.layers.0/gradcam/energy_in_box"
    trainer = transformers.Trainer(
        model=tiny_vit(),
        args=training_args(
            tmp_path,
            save_strategy="epoch",
            load_best_model_at_end=True,
            metric_for_best_model=metric,
            greater_is_better=True,
        ),
        train_dataset=Squares(16, seed=1),
        eval_dataset=Squares(4, seed=2),
        callbacks=[transformers.EarlyStoppingCallback(early_stopping_patience=5), cb],
    )
    with pytest.warns(UserWarning, match="boom in the target"):
        trainer.train()
    assert trainer.state.global_step == 4  # both epochs ran
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 2 and all(math.isnan(e[f"eval_{metric}"]) for e in evals)
    skipped = "eval_gradcam/vit.layers.0/skipped_passes"
    assert [e[skipped] for e in evals] == [1.0, 2.0]
    assert torch.isfinite(torch.tensor(evals[-1]["eval_loss"]))
    _, scalars = read_events(cb.log_dir)
    assert [v for _, v in scalars[skipped[len("eval_") :]]] == [1.0, 2.0]
    assert metric not in scalars  # nothing measured, nothing drawn as a value
