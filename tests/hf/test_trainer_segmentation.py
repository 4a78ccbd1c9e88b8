"""GradCAMTrainerCallback on a tiny random SegFormer in a real Trainer run, and a failed pass
that warns and lets the run go on."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402
from cam_events import read_events  # noqa: E402
from hf_tiny import Squares, tiny_segformer, tiny_vit, training_args  # noqa: E402

from lightning_gradcam import GradCAMTrainerCallback  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def test_segformer_maps_and_metrics(tmp_path):
    transformers.set_seed(0)
    cb = GradCAMTrainerCallback(methods=("gradcam", "hirescam"), num_samples=2)
    trainer = transformers.Trainer(
        model=tiny_segformer(),
        args=training_args(tmp_path, num_train_epochs=1),
        train_dataset=Squares(16, seed=1, segmentation=True),
        eval_dataset=Squares(4, seed=2, segmentation=True),
        callbacks=[cb],
    )
    trainer.train()
    assert cb.task.name == "segmentation"
    (last,) = [e for e in trainer.state.log_history if "eval_loss" in e]
    ours = {k: v for k, v in last.items() if k.startswith("eval_gradcam/")}
    # A random SegFormer may show no positive evidence for a class (said, never a 0
    # energy): its rate is logged for each method; energy_in_mask where there is evidence.
    for method in ("gradcam", "hirescam"):
        assert f"eval_gradcam/{cb._layer()}/{method}/no_evidence_rate" in ours, sorted(ours)
    assert all(0.0 <= v <= 1.0 for k, v in ours.items() if "rate" in k or "energy" in k)
    images, scalars = read_events(cb.log_dir)
    assert any(t.startswith(f"gradcam/{cb._layer()}/hirescam/") for t in images)
    for key, value in ours.items():
        assert scalars[key[len("eval_") :]][-1][1] == pytest.approx(value)


def test_a_failed_pass_warns_and_the_run_goes_on(tmp_path):
    transformers.set_seed(0)
    calls = {"n": 0}

    def target(output):  # fine for the trial pass, then fails
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom in the target")
        return output.logits[:, :1]

    cb = GradCAMTrainerCallback(methods=("gradcam",), num_samples=2, target=target)
    trainer = transformers.Trainer(
        model=tiny_vit(),
        args=training_args(tmp_path),
        train_dataset=Squares(16, seed=1),
        eval_dataset=Squares(4, seed=2),
        callbacks=[cb],
    )
    with pytest.warns(UserWarning, match="boom in the target"):
        trainer.train()
    assert trainer.state.global_step == 4  # both epochs ran
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 2 and not any(k.startswith("eval_gradcam/") for k in evals[0])
    assert torch.isfinite(torch.tensor(evals[-1]["eval_loss"]))
