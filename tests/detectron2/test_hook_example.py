"""examples/detectron2_shapes.py runs end to end (3 iterations) and logs what the README says."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
from hook_helpers import image_steps, read_events

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_example_writes_tensorboard_logs_and_a_picture(tmp_path):
    out = tmp_path / "runs"
    picture = tmp_path / "hook.png"
    command = [
        sys.executable,
        os.path.join(ROOT, "examples", "detectron2_shapes.py"),
        "--iters", "3",
        "--period", "2",
        "--train-images", "4",
        "--out", str(out),
        "--picture", str(picture),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tensorboard --logdir" in done.stdout
    steps = image_steps(read_events(str(out / "c4")))
    assert set(steps) == {
        f"gradcam/image_{i:02d}/{what}"
        for i in range(4)
        for what in (
            "detections",
            "gradcam",
            "gradcam++",
            "gradcam/filmstrip",
            "gradcam++/filmstrip",
        )
    }
    assert all(s == [1, 2] for s in steps.values())
    image = cv2.imread(str(picture))
    assert image is not None and image.shape[0] > 4 * 80  # one row per validation image
