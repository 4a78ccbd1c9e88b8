"""GradCAMYOLOCallback(metrics_on="validation") in real Ultralytics runs: the scalars over
every validation image equal those the fixed-sample path gives when the fixed samples are
every validation image, with objects found and objects missed; training is untouched."""

from __future__ import annotations

import csv

import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")

from yolo_runs import train, train_options  # noqa: E402

from lightning_gradcam import DetectionCAM, GradCAMYOLOCallback  # noqa: E402
from lightning_gradcam.yolo.shapes import write_shapes_dataset  # noqa: E402
from lightning_gradcam.yolo.validation_set import validation_batches  # noqa: E402

pytestmark = pytest.mark.timeout(300)
# At random init a box spans about 15 strides: 192 px images let a P3 (stride 8) box fit.
SIZE, VAL = 192, 5  # training batch 2: validation batches of 4 and 1
METHODS = ("gradcam", "hirescam")
OWNED = ("energy_in_box", "pointing_game", "found_rate", "no_evidence_rate")


def _callback(**kwargs):
    # conf=0: after one epoch every score is far below Ultralytics' 0.25
    return GradCAMYOLOCallback(methods=METHODS, conf=0.0, max_image_size=None, **kwargs)


class _MetricsSeen:
    """``trainer.metrics`` at each ``on_fit_epoch_end``, after the callback's own."""

    def __init__(self):
        self.metrics = []

    def attach(self, yolo):
        yolo.add_callback("on_fit_epoch_end", lambda t: self.metrics.append(dict(t.metrics)))


def _last_row(save_dir):
    with open(save_dir / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))[-1]


def _label_detections(data, model, samples, images):
    """Set the validation labels of ``images`` to a box ``model`` detects there (the labels
    do not change training, so an identical run finds them)."""
    for index in images:
        image = samples.images[index]
        dets = DetectionCAM(model, methods=METHODS, conf=0.0).explain([image], max_detections=None)
        height, width = image.shape[-2:]
        offset = torch.tensor([(width - SIZE) / 2, (height - SIZE) / 2] * 2)
        inside = [
            d for d in dets[0] if bool((d.box >= offset).all() and (d.box <= offset + SIZE).all())
        ]
        assert inside, "no detection lies inside the image; the test needs one"
        x0, y0, x1, y1 = ((inside[0].box - offset) / SIZE).tolist()
        label = data.parent / "labels" / "val" / f"{index:04d}.txt"
        label.write_text(
            f"{inside[0].class_id} {(x0 + x1) / 2:.7f} {(y0 + y1) / 2:.7f} "
            f"{x1 - x0:.7f} {y1 - y0:.7f}\n"
        )
    (data.parent / "labels" / "val.cache").unlink()  # Ultralytics caches the labels


def test_whole_set_means_equal_the_sample_path_over_every_validation_image(tmp_path):
    data = write_shapes_dataset(tmp_path / "data", num_train=2, num_val=VAL, size=SIZE, seed=0)
    runs = tmp_path / "runs"
    probe = _callback(num_samples=VAL)
    yolo = train(data, runs, "probe", probe, epochs=1, imgsz=SIZE, batch=2)
    # Images 0 and 1 get an object the model finds; the others keep their shapes, missed.
    _label_detections(data, yolo.trainer.ema.ema, probe.samples, images=(0, 1))

    whole = _callback(num_samples=1, metrics_on="validation")
    seen = _MetricsSeen()
    measured = train(data, runs, "whole", whole, epochs=1, imgsz=SIZE, batch=2, others=[seen])
    samples = _callback(num_samples=VAL)
    sampled = train(data, runs, "samples", samples, epochs=1, imgsz=SIZE, batch=2)

    assert whole.whole_set.images == VAL
    assert len(whole.samples) == 1 and len(samples.samples) == VAL
    got, want = _last_row(runs / "whole"), _last_row(runs / "samples")
    for method in METHODS:
        for name in OWNED:
            column = f"gradcam/head_input/{method}/{name}"
            assert float(got[column]) == pytest.approx(float(want[column]), abs=1e-6), column
        found = float(got[f"gradcam/head_input/{method}/found_rate"])
        assert 0.0 < found < 1.0  # found and missed objects both counted
    # HiResCAM has positive evidence where Grad-CAM at the head input has none this early
    assert float(got["gradcam/head_input/hirescam/energy_in_box"]) > 0.0
    # trainer.metrics (what Ultralytics' loggers read) carries the set's values too
    key = "gradcam/head_input/hirescam/energy_in_box"
    # (the epoch's; Ultralytics calls on_fit_epoch_end again after validating best.pt)
    assert seen.metrics[0][key] == pytest.approx(float(got[key]), abs=1e-6)  # csv: 6 digits
    # Training is untouched: the same weights with either callback.
    for name, value in sampled.trainer.model.state_dict().items():
        assert torch.equal(value, measured.trainer.model.state_dict()[name]), name

    # The set is read from the dataset in the loader's batches, each image once, in order.
    trainer = measured.trainer
    batches = list(validation_batches(trainer, None))
    assert [len(b["im_file"]) for b in batches] == [4, 1]
    assert [f for b in batches for f in b["im_file"]] == list(trainer.test_loader.dataset.im_files)
    assert [len(b["im_file"]) for b in validation_batches(trainer, 1)] == [4]


def test_a_validation_set_it_cannot_measure_fails_before_the_first_epoch(tmp_path):
    data = write_shapes_dataset(tmp_path / "data", num_train=2, num_val=2, size=64, seed=0)

    def broken(batch):
        raise ValueError("this parser cannot read the batch")

    callback = GradCAMYOLOCallback(
        methods=("gradcam",), metrics_on="validation", batch_parser=broken
    )
    epochs = []
    yolo = ultralytics.YOLO("yolov8n.yaml")
    callback.attach(yolo)
    yolo.add_callback("on_train_epoch_start", lambda trainer: epochs.append(trainer.epoch))
    with pytest.raises(ValueError, match="cannot read the batch"):
        yolo.train(**train_options(data, tmp_path / "runs", "broken", epochs=1))
    assert epochs == []
