"""GradCAMHook never takes down the detectron2 run it watches: a pass that raises is one
warning, skipped and marked, and training goes on; ``on_error="raise"`` stops the run."""

from __future__ import annotations

import os
import warnings

import pytest
from detectron2.engine import HookBase
from hook_helpers import image_steps, read_events, small_config, train

from detectron2_hooks import GradCAMHook
from detectron2_hooks.shapes import register_shapes, unregister

ITERS = 5  # passes after iterations 1 and 3 (period 2) and at the last one, 4


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    name = f"hook_res_shapes_{os.getpid()}"
    dicts = register_shapes(name, str(tmp_path_factory.mktemp("shapes")), count=2, size=128)
    yield name, dicts
    unregister(name)


class Tripwire(HookBase):
    """Makes the model's backbone raise in the CAM passes (eval mode) of the given
    iterations; training forwards (train mode) are untouched."""

    def __init__(self, fail_at):
        self.fail_at = set(fail_at)

    def before_train(self):
        model = self.trainer.model

        def check(module, inputs):
            if not model.training and self.trainer.iter in self.fail_at:
                raise ValueError(f"backbone broke at iteration {self.trainer.iter}")

        model.backbone.register_forward_pre_hook(check)


def _run(shapes, tmp_path, fail_at, **kwargs):
    name, dicts = shapes
    cfg = small_config("c4")
    hook = GradCAMHook(dataset=name, num_images=1, period=2, max_detections=2, cfg=cfg, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = train(
            cfg, dicts, ITERS, [Tripwire(fail_at), hook], log_dir=str(tmp_path), writer_first=False
        )
    ours = [str(w.message) for w in caught if "GradCAMHook" in str(w.message)]
    return hook, trainer, ours


def test_a_failed_pass_is_skipped_marked_and_training_goes_on(shapes, tmp_path):
    hook, trainer, ours = _run(shapes, tmp_path, fail_at={1})
    assert trainer.iter == ITERS  # the run went to its end
    assert ours == [
        "GradCAMHook: the CAM pass at iteration 1 failed and was skipped (ValueError: backbone "
        "broke at iteration 1); training goes on (1 failed in a row, off after 3)"
    ]
    assert [entry["iter"] for entry in hook.history] == [3, 4]
    events = read_events(str(tmp_path))
    assert image_steps(events)["gradcam/image_00/detections"] == [3, 4]
    marks = events.Scalars("gradcam/skipped_passes")
    assert [(m.step, m.value) for m in marks] == [(1, 1.0)]


def test_on_error_raise_stops_the_run(shapes, tmp_path):
    with pytest.raises(ValueError, match="backbone broke at iteration 1") as caught:
        _run(shapes, tmp_path, fail_at={1}, on_error="raise")
    assert any("on_error='warn' would skip" in n for n in getattr(caught.value, "__notes__", []))


def test_on_error_is_checked_in_the_constructor():
    with pytest.raises(ValueError, match="on_error must be 'warn'"):
        GradCAMHook(dataset="x", on_error="ignore")


def test_three_failed_passes_in_a_row_switch_the_hook_off(shapes, tmp_path):
    hook, trainer, ours = _run(shapes, tmp_path, fail_at={1, 3, 4})
    assert trainer.iter == ITERS and hook.history == []
    assert len(ours) == 3 and "switches itself off for the rest of the run" in ours[2]
    marks = read_events(str(tmp_path)).Scalars("gradcam/skipped_passes")
    assert [(m.step, m.value) for m in marks] == [(1, 1.0), (3, 2.0), (4, 3.0)]
