"""The demo script runs (tiny settings) and writes logs and a film strip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from cam_events import read_events

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_demo_script_writes_logs_and_film_strip(tmp_path):
    out = tmp_path / "runs"
    command = [
        sys.executable,
        str(ROOT / "examples" / "lightning_shapes.py"),
        "--epochs",
        "2",
        "--train-images",
        "64",
        "--size",
        "32",
        "--out",
        str(out),
        "--quiet",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"tensorboard --logdir {out} --samples_per_plugin images=100" in done.stdout
    strip = cv2.imread(str(out / "version_0" / "filmstrip_gradcam.png"))
    cell_h, cell_w = 32 + 14, 32  # 32-pixel thumbnails with a caption band
    assert strip.shape == (8 * cell_h + 7 * 2, 3 * cell_w + 2 * 2, 3)  # input + 2 epochs
    images, scalars = read_events(out / "version_0")
    assert "gradcam/net.features.block3/gradcam++/grid" in images
    assert len(scalars["gradcam/net.features.block3/gradcam/energy_in_box"]) == 2
