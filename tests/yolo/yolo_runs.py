"""Real Ultralytics training runs for the callback's tests: tiny generated data, CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import ultralytics

from lightning_gradcam.yolo.shapes import write_shapes_dataset


def shapes_data(root: Path) -> Path:
    """A tiny generated dataset: 8 training and 4 validation images of 64 px."""
    return write_shapes_dataset(root / "data", num_train=8, num_val=4, size=64, seed=0)


def train_options(
    data: Path, root: Path, name: str, epochs: int = 2, imgsz: int = 64, batch: int = 4
) -> dict:
    """The ``YOLO.train`` options of every test run: CPU, deterministic, no plots (the
    validation loader's batch is twice ``batch``)."""
    return dict(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        workers=0,
        device="cpu",
        amp=False,
        plots=False,
        verbose=False,
        project=str(root),
        name=name,
        exist_ok=True,
        seed=0,
        deterministic=True,
    )


def train(
    data: Path,
    root: Path,
    name: str,
    callback=None,
    epochs: int = 2,
    model="yolov8n.yaml",
    others=(),
    imgsz: int = 64,
    batch: int = 4,
):
    """``YOLO(model).train(...)`` at random init (seed 0), with ``callback`` attached, then
    ``others`` (objects with an ``attach(yolo)``, registered after it)."""
    torch.manual_seed(0)
    yolo = ultralytics.YOLO(model)
    if callback is not None:
        callback.attach(yolo)
    for other in others:
        other.attach(yolo)
    yolo.train(**train_options(data, root, name, epochs, imgsz, batch))
    return yolo


ROOT = Path(__file__).resolve().parents[2]


def run_python(args, env=None, drop=(), timeout=300) -> str:
    """Run ``python args`` in a fresh process with this checkout first on the path, ``env``
    added and the variables ``drop`` removed; its stdout, or its output's tail on failure."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
