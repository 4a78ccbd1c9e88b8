"""Regenerate the pictures of docs/yolo.md from an Ultralytics YOLO trained on generated shapes
until it finds them (random init, no download; a few minutes on a CPU; run it by hand, not in
tests).

    python docs/make_yolo_images.py     # writes docs/images/yolo_grid.png, yolo_filmstrip.png

A ``yolov8n.yaml`` is trained at ``imgsz=128`` on circles, squares and triangles written in
YOLO format (``lightning_gradcam.yolo.shapes``) with ``GradCAMYOLOCallback`` attached; the
pictures are the callback's own: the last epoch's HiResCAM grid, read back from the event file
in the run's ``save_dir``, and its film strip (one column per explained epoch).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "images"

from lightning_gradcam import GradCAMYOLOCallback  # noqa: E402
from lightning_gradcam.yolo.shapes import write_shapes_dataset  # noqa: E402

METHOD = "hirescam"


def last_image(save_dir: Path, tag: str) -> np.ndarray:
    """The last picture logged under ``tag`` in the run's event files (RGB uint8)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = []
    for path in glob.glob(str(save_dir / "**" / "events.out.tfevents.*"), recursive=True):
        acc = EventAccumulator(path, size_guidance={"images": 0})
        acc.Reload()
        if tag in acc.Tags()["images"]:
            events.extend(acc.Images(tag))
    last = max(events, key=lambda e: e.step)
    return cv2.imdecode(np.frombuffer(last.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)[
        ..., ::-1
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=96)
    args = parser.parse_args()
    import torch
    import ultralytics

    ultralytics.settings.update(
        dict.fromkeys(
            ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb"),
            False,
        )
    )
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="yolo-docs-"))
    data = write_shapes_dataset(
        work / "data", num_train=args.train_images, num_val=4, size=128, seed=0
    )
    torch.manual_seed(0)
    yolo = ultralytics.YOLO("yolov8n.yaml")
    callback = GradCAMYOLOCallback(
        num_samples=2, methods=("gradcam", METHOD), every_n_epochs=5, max_image_size=160
    ).attach(yolo)
    yolo.train(
        data=str(data),
        epochs=args.epochs,
        imgsz=128,
        batch=16,
        workers=0,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(work / "runs"),
        name="shapes",
        seed=0,
    )
    save_dir = work / "runs" / "shapes"
    OUT.mkdir(parents=True, exist_ok=True)
    grid = last_image(save_dir, f"gradcam/head_input/{METHOD}/grid")
    cv2.imwrite(str(OUT / "yolo_grid.png"), grid[..., ::-1])
    cv2.imwrite(str(OUT / "yolo_filmstrip.png"), callback.filmstrip(METHOD)[..., ::-1])
    print(callback.history[-1]["scalars"])
    print(
        f"wrote {OUT / 'yolo_grid.png'}, {OUT / 'yolo_filmstrip.png'} in "
        f"{time.perf_counter() - start:.0f} s (run: {save_dir})"
    )


if __name__ == "__main__":
    main()
