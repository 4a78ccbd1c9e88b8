"""GradCAMYOLOCallback: wrong arguments fail before the first epoch with a message that says
what to pass; a pass that fails during training is one warning, and the run goes on."""

from __future__ import annotations

import csv
import math
import warnings

import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")

from cam_events import read_events  # noqa: E402
from yolo_runs import shapes_data, train  # noqa: E402

from lightning_gradcam import GradCAMYOLOCallback  # noqa: E402
from lightning_gradcam.core.layers import LayerNotFoundError  # noqa: E402

PREFIX = "gradcam/head_input/gradcam"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_data(tmp_path_factory.mktemp("yolo_errors"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ("gradcam", "gradcamm")}, "unknown CAM method.*'gradcamm'.*choose from"),
        ({"methods": "guided_gradcam"}, "guided backpropagation.*choose from"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
        ({"num_samples": -2}, "num_samples must be an integer >= 1, got -2"),
        ({"every_n_epochs": 0}, "every_n_epochs must be an integer >= 1"),
        ({"conf": 1.5}, r"conf must be in \[0, 1\], got 1.5"),
        ({"iou": "high"}, "iou must be a number"),
        ({"on_error": "ignore"}, "on_error must be 'warn'.*or 'raise'"),
        ({"metrics_on": "evaluation"}, "metrics_on must be 'samples'.*or 'validation'"),
        ({"metrics_batches": 2}, "pass metrics_on='validation' too"),
    ],
)
def test_wrong_arguments_are_refused_in_the_constructor(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradCAMYOLOCallback(**kwargs)


def test_an_unknown_layer_is_refused_at_attach_with_the_closest_names():
    yolo = ultralytics.YOLO("yolov8n.yaml")
    with pytest.raises(LayerNotFoundError, match=r"'modle\.15'.*Closest names: 'model\.15'"):
        GradCAMYOLOCallback(layer="modle.15").attach(yolo)
    assert not any(  # nothing was registered
        getattr(fn, "__self__", None).__class__ is GradCAMYOLOCallback
        for fns in yolo.callbacks.values()
        for fn in fns
    )


@pytest.mark.parametrize(
    "config, message",
    [
        ("yolov8n-seg.yaml", r"detection models.*SegmentationModel \(segment\)"),
        ("yolov8n-pose.yaml", r"detection models.*PoseModel \(pose\)"),
        ("yolov8n-obb.yaml", r"detection models.*OBBModel \(OBB\)"),
        ("yolov8n-cls.yaml", "detection models.*classification model.*GradCAMCallback"),
    ],
)
def test_attach_refuses_other_tasks_by_name(config, message):
    with pytest.raises(TypeError, match=message):
        GradCAMYOLOCallback().attach(ultralytics.YOLO(config))


def test_attach_takes_the_yolo_wrapper_once():
    yolo = ultralytics.YOLO("yolov8n.yaml")
    with pytest.raises(TypeError, match=r"got DetectionModel; pass the YOLO wrapper"):
        GradCAMYOLOCallback().attach(yolo.model)
    callback = GradCAMYOLOCallback().attach(yolo)
    with pytest.raises(RuntimeError, match="attached already"):
        callback.attach(yolo)


def test_a_layer_the_class_scores_do_not_reach_fails_before_the_first_epoch(data, tmp_path):
    # model.22.cv2.0: the Detect head's box-regression branch at P3. A random-init YOLO has
    # no detection at conf 0.25, so only a check that does not need one can refuse it here.
    callback = GradCAMYOLOCallback(layer="model.22.cv2.0", num_samples=2)
    with pytest.raises(ValueError, match=r"do not depend on layer 'model\.22\.cv2\.0'") as info:
        train(data, tmp_path, "box_branch", callback)
    assert any("trial CAM pass before training" in note for note in info.value.__notes__)
    assert not (tmp_path / "box_branch" / "results.csv").exists()  # no epoch was trained
    assert callback.history == []


class Tripwire:
    """Makes the validated (EMA) model's first layer raise during the CAM pass of the given
    epochs (0-based): armed after the epoch's training, disarmed after its validation (so no
    hook is in the checkpoint Ultralytics saves). Ultralytics validates under inference mode,
    the CAM pass outside it: only the CAM pass trips."""

    def __init__(self, fail_at):
        self.fail_at = set(fail_at)
        self.handle = None

    def attach(self, yolo):
        yolo.add_callback("on_train_epoch_end", self.arm)
        yolo.add_callback("on_val_end", self.disarm)  # after the callback's own on_val_end

    def arm(self, trainer):
        if trainer.epoch not in self.fail_at:
            return
        epoch = trainer.epoch + 1

        def check(module, inputs):
            if not torch.is_inference_mode_enabled():
                raise ValueError(f"the first layer broke at epoch {epoch}")

        self.handle = trainer.ema.ema.model[0].register_forward_pre_hook(check)

    def disarm(self, validator):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def _rows(save_dir):
    with open(save_dir / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_failed_pass_warns_and_the_run_ends_with_results_csv(data, tmp_path):
    callback = GradCAMYOLOCallback(num_samples=2, methods=("gradcam",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yolo = train(data, tmp_path, "tripped", callback, others=[Tripwire(fail_at={0})])
    ours = [str(w.message) for w in caught if "GradCAMYOLOCallback" in str(w.message)]
    assert ours == [
        "GradCAMYOLOCallback: the CAM pass at epoch 1 failed and was skipped (ValueError: the "
        "first layer broke at epoch 1); training goes on (1 failed in a row, off after 3)"
    ]
    assert yolo.trainer.epoch == 1  # both epochs ran
    assert [entry["epoch"] for entry in callback.history] == [1]
    rows = _rows(tmp_path / "tripped")
    assert len(rows) == 2
    assert math.isnan(float(rows[0][f"{PREFIX}/energy_in_box"]))  # the skipped epoch
    assert float(rows[1][f"{PREFIX}/found_rate"]) == 0.0  # the next one is there
    _, scalars = read_events(tmp_path / "tripped")
    assert scalars["gradcam/head_input/skipped_passes"] == [(1, 1.0)]
    assert [step for step, _ in scalars[f"{PREFIX}/energy_in_box"]] == [2]


def test_on_error_raise_stops_the_run(data, tmp_path):
    callback = GradCAMYOLOCallback(num_samples=1, methods=("gradcam",), on_error="raise")
    with pytest.raises(ValueError, match="the first layer broke at epoch 1"):
        train(data, tmp_path, "raised", callback, others=[Tripwire(fail_at={0})])
