"""Real Ultralytics training runs for the callback's tests: tiny generated data, CPU."""

from __future__ import annotations

from pathlib import Path

import torch
import ultralytics

from lightning_gradcam.yolo.shapes import write_shapes_dataset


def shapes_data(root: Path) -> Path:
    """A tiny generated dataset: 8 training and 4 validation images of 64 px."""
    return write_shapes_dataset(root / "data", num_train=8, num_val=4, size=64, seed=0)


def train_options(data: Path, root: Path, name: str, epochs: int = 2, imgsz: int = 64) -> dict:
    """The ``YOLO.train`` options of every test run: CPU, deterministic, no plots."""
    return dict(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=4,
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
):
    """``YOLO(model).train(...)`` at random init (seed 0), with ``callback`` attached, then
    ``others`` (objects with an ``attach(yolo)``, registered after it)."""
    torch.manual_seed(0)
    yolo = ultralytics.YOLO(model)
    if callback is not None:
        callback.attach(yolo)
    for other in others:
        other.attach(yolo)
    yolo.train(**train_options(data, root, name, epochs, imgsz))
    return yolo
