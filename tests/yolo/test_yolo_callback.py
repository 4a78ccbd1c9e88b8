"""GradCAMYOLOCallback in real Ultralytics training runs (random init, generated data)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")

from cam_events import read_events  # noqa: E402
from yolo_runs import shapes_data, train  # noqa: E402

from lightning_gradcam import GradCAMYOLOCallback  # noqa: E402
from lightning_gradcam.core.render import caption, draw_boxes, to_uint8_image  # noqa: E402

PREFIX = "gradcam/head_input/gradcam"


def _rows(save_dir):
    with open(save_dir / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _weights(yolo):
    return {k: v.detach().clone() for k, v in yolo.trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_data(tmp_path_factory.mktemp("yolo"))


@pytest.fixture(scope="module")
def run(data):
    """Two epochs with the callback: (callback, yolo, save_dir)."""
    root = data.parent.parent / "runs"
    callback = GradCAMYOLOCallback(num_samples=2, methods=("gradcam", "gradcam++"))
    yolo = train(data, root, "with", callback)
    return callback, yolo, root / "with"


def test_every_epoch_writes_overlays_and_scalars_to_tensorboard_in_save_dir(run):
    callback, _, save_dir = run
    assert callback.log_dir == str(save_dir)
    images, scalars = read_events(save_dir)
    for method in ("gradcam", "gradcam++"):
        prefix = f"gradcam/head_input/{method}"
        for name in ("energy_in_box", "pointing_game", "found_rate", "no_evidence_rate"):
            assert [step for step, _ in scalars[f"{prefix}/{name}"]] == [1, 2], name
        assert [step for step, _ in images[f"{prefix}/object_00"]] == [1, 2]
        assert [step for step, _ in images[f"{prefix}/grid"]] == [1, 2]
        strips = images[f"{prefix}/filmstrip"]
        assert strips[1][1].shape[1] > strips[0][1].shape[1]  # one column more per pass
    # a random-init YOLO finds nothing: the tile is the object's green box and "missed"
    samples, names = callback.samples, callback.task.options.class_names
    picture = to_uint8_image(samples.images[0])
    box, label = samples.boxes[0][0], int(samples.labels[0][0])
    expected = caption(draw_boxes(picture, box[None]), f"{names[label]}: missed")
    np.testing.assert_array_equal(images[f"{PREFIX}/object_00"][-1][1], expected)
    assert dict(scalars[f"{PREFIX}/energy_in_box"]) == {1: 0.0, 2: 0.0}
    assert dict(scalars[f"{PREFIX}/found_rate"]) == {1: 0.0, 2: 0.0}


def test_scalars_are_results_csv_columns_at_every_epoch(run):
    callback, _, save_dir = run
    rows = _rows(save_dir)
    assert len(rows) == 2
    assert set(callback.tags) <= set(rows[0]) and len(callback.tags) == 12
    assert list(rows[0])[-len(callback.tags) :] == list(callback.tags)
    for row in rows:
        for tag in callback.tags:
            if tag.endswith(("energy_in_box", "pointing_game", "found_rate", "no_evidence_rate")):
                assert math.isfinite(float(row[tag])), tag
    # the values are the callback's own, epoch by epoch
    for row, passed in zip(rows, callback.history):
        assert float(row[f"{PREFIX}/no_evidence_rate"]) == pytest.approx(
            passed["scalars"]["gradcam"]["no_evidence_rate"]
        )
    assert math.isnan(float(rows[0][f"{PREFIX}/drift_vs_prev"]))  # nothing to compare yet
    assert f"{PREFIX}/lr" not in rows[0] and "lr/pg0" in rows[0]  # Ultralytics' own columns stay


def test_training_is_bit_identical_with_and_without_the_callback(run, data):
    _, with_callback, _ = run
    without = train(data, data.parent.parent / "runs", "without")
    again = train(data, data.parent.parent / "runs", "again")  # the run is deterministic
    reference, plain, repeat = _weights(with_callback), _weights(without), _weights(again)
    assert torch.equal(
        torch.cat([v.flatten().float() for v in plain.values()]),
        torch.cat([v.flatten().float() for v in repeat.values()]),
    )
    assert reference.keys() == plain.keys()
    different = [k for k in plain if not torch.equal(plain[k], reference[k])]
    assert not different, different[:5]
