"""The found-object path of GradCAMYOLOCallback, exercised honestly: a YOLO trained for one
epoch finds none of the generated shapes, so the validation label is set to a box that the
model itself detects at that epoch (read with DetectionCAM from a first, identical run; the
validation labels do not change training), and the second run's pass must find it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")

from cam_events import read_events  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402
from yolo_runs import train  # noqa: E402

from lightning_gradcam import DetectionCAM, GradCAMYOLOCallback  # noqa: E402
from lightning_gradcam.core.render import caption, draw_boxes, overlay, to_uint8_image  # noqa: E402
from lightning_gradcam.pictures import evidence_caption  # noqa: E402
from lightning_gradcam.tasks.detection import DETECTION_COLOR  # noqa: E402
from lightning_gradcam.yolo.shapes import write_shapes_dataset  # noqa: E402

# At random init a box spans about 15 strides: 192 px images let a P3 (stride 8) box fit.
SIZE = 192
METHODS = ("gradcam", "hirescam")


def _callback():
    # conf=0: after one epoch every score is far below Ultralytics' 0.25
    return GradCAMYOLOCallback(num_samples=1, methods=METHODS, conf=0.0, max_image_size=None)


def _run(data, root, name):
    callback = _callback()
    yolo = train(data, root, name, callback, epochs=1, imgsz=SIZE)
    return callback, yolo


def test_an_object_the_model_detects_is_found_and_drawn(tmp_path):
    data = write_shapes_dataset(tmp_path / "data", num_train=2, num_val=1, size=SIZE, seed=0)
    probe, yolo = _run(data, tmp_path / "runs", "probe")
    image = probe.samples.images[0]  # letterboxed by the validation loader
    assert probe.history[0]["scalars"]["gradcam"]["found_rate"] == 0.0  # the shapes: missed
    dets = DetectionCAM(yolo.trainer.ema.ema, methods=METHODS, conf=0.0).explain(
        [image], max_detections=None
    )[0]
    height, width = image.shape[-2:]
    offset = torch.tensor([(width - SIZE) / 2, (height - SIZE) / 2] * 2)
    inside = [d for d in dets if bool((d.box >= offset).all() and (d.box <= offset + SIZE).all())]
    assert inside, "no detection lies inside the image; the test needs one"
    target = inside[0]
    x0, y0, x1, y1 = ((target.box - offset) / SIZE).tolist()
    label_file = data.parent / "labels" / "val" / "0000.txt"
    label_file.write_text(
        f"{target.class_id} {(x0 + x1) / 2:.7f} {(y0 + y1) / 2:.7f} {x1 - x0:.7f} {y1 - y0:.7f}\n"
    )
    (data.parent / "labels" / "val.cache").unlink()  # Ultralytics caches the labels

    callback, _ = _run(data, tmp_path / "runs", "found")
    gt = callback.samples.boxes[0][0]
    torch.testing.assert_close(gt, target.box, atol=1e-3, rtol=0)
    assert torch.equal(callback.samples.images[0], image)
    scalars = callback.history[0]["scalars"]
    assert scalars["gradcam"]["found_rate"] == scalars["hirescam"]["found_rate"] == 1.0
    # this epoch's Grad-CAM at the head input has no positive evidence; HiResCAM has
    assert scalars["gradcam"]["no_evidence_rate"] == 1.0
    assert scalars["gradcam"]["energy_in_box"] == 0.0
    assert scalars["hirescam"]["no_evidence_rate"] == 0.0
    assert 0.0 < scalars["hirescam"]["energy_in_box"] <= 1.0
    assert scalars["hirescam"]["pointing_game"] in (0.0, 1.0)

    # The tile: the highest-scoring detection of the class with IoU >= 0.5 (the first on
    # ties), its map, its box yellow, the ground truth green, "<class> <score>".
    same = [d for d in dets if d.class_id == target.class_id]
    ious = box_iou(gt[None], torch.stack([d.box for d in same]))[0]
    match = max((d for d, v in zip(same, ious) if v >= 0.5), key=lambda d: d.score)
    names = callback.task.options.class_names
    images, logged = read_events(tmp_path / "runs" / "found")
    picture = to_uint8_image(image)
    for method in METHODS:
        text = evidence_caption(f"{names[match.class_id]} {match.score:.2f}", method != "gradcam")
        drawn = picture if method == "gradcam" else overlay(picture, match.maps[method], "jet", 0.5)
        drawn = draw_boxes(drawn, match.box[None], color=DETECTION_COLOR)
        expected = caption(draw_boxes(drawn, gt[None]), text)
        np.testing.assert_array_equal(
            images[f"gradcam/head_input/{method}/object_00"][0][1], expected
        )
        assert logged[f"gradcam/head_input/{method}/found_rate"] == [(1, 1.0)]
