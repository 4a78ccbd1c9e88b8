"""GradCAMTrainerCallback(methods=None), the default, computes the task's own methods as
GradCAMCallback does, resolved at train begin: a real Trainer on a tiny random ViT
(classification: gradcam, gradcam++) and a tiny random SegFormer (segmentation: gradcam,
hirescam). The methods show in the metric keys of every evaluation and in the event file."""

from __future__ import annotations

import warnings

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from cam_events import read_events  # noqa: E402
from hf_tiny import Squares, tiny_segformer, tiny_vit, training_args  # noqa: E402

from lightning_gradcam import GradCAMTrainerCallback  # noqa: E402

pytestmark = pytest.mark.timeout(240)

CASES = {
    "vit": (tiny_vit, False, "classification", ("gradcam", "gradcam++")),
    "segformer": (tiny_segformer, True, "segmentation", ("gradcam", "hirescam")),
}


def _methods_in(tags, prefix):
    """The method part of ``<prefix>/<method>/...`` tags (skipped_passes has none)."""
    return {tag[len(prefix) + 1 :].split("/")[0] for tag in tags if tag.startswith(prefix + "/")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_methods_none_is_the_tasks_default(tmp_path, case):
    make, segmentation, task, defaults = CASES[case]
    cb = GradCAMTrainerCallback(num_samples=2)
    assert cb.methods == ()  # not known before the task is
    with pytest.raises(RuntimeError, match="no evaluation has run yet"):
        cb.filmstrip()
    transformers.set_seed(0)
    trainer = transformers.Trainer(
        model=make(),
        args=training_args(tmp_path),
        train_dataset=Squares(8, seed=1, segmentation=segmentation),
        eval_dataset=Squares(2, seed=2, segmentation=segmentation),
        callbacks=[cb],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert cb.task.name == task
    assert cb.methods == defaults == type(cb.task).default_methods
    # Segmentation warns when asked for Grad-CAM++: its default must not ask.
    assert not [w for w in caught if "gradcam++" in str(w.message).lower()], caught
    layer = cb.task.layer_name
    prefix = f"eval_gradcam/{layer}"
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 2
    for entry in evals:  # every evaluation carries every default method's keys, no other
        assert _methods_in(entry, prefix) == set(defaults) | {"skipped_passes"}
        for method in defaults:
            name = "energy_in_mask" if segmentation else "energy_in_box"
            assert 0.0 <= entry[f"{prefix}/{method}/{name}"] <= 1.0
    images, scalars = read_events(cb.log_dir)
    assert _methods_in(scalars, f"gradcam/{layer}") == set(defaults)
    assert _methods_in(images, f"gradcam/{layer}") - {"inputs"} == set(defaults)
    assert cb.filmstrip().shape == cb.filmstrip(defaults[0]).shape  # the first by default
