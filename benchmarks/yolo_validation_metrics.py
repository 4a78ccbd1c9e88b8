"""Cost of ``GradCAMYOLOCallback(metrics_on="validation")`` in real Ultralytics training runs:
the extra time per explained epoch, against Ultralytics' own validation of that epoch.

    ratio = (t_validation - t_samples) / (epochs * t_val)

``t_samples`` / ``t_validation``: the wall time of ``yolo.train(...)`` with the callback's
default ``metrics_on="samples"`` and with ``"validation"`` (same seed, data and options,
every epoch explained, the fixed samples' pass in both). ``t_val``: Ultralytics' validation
loop during training, from ``on_val_start`` to ``on_val_end`` (median over the epochs). The
variants alternate ``--repeats`` times, and the medians are taken.

Random-init yolov8n on generated shapes (``lightning_gradcam.yolo.shapes``), CPU, ``conf=0``.
A random-init model finds no object (no detection of the class with IoU >= 0.5), so this
times what every validation batch costs: a forward, NMS and the matching. Each object found
adds one explained detection, and ``benchmarks/yolo.py`` times those (16 detections: about
1x one forward+backward).

    YOLO_OFFLINE=1 python benchmarks/yolo_validation_metrics.py [--repeats 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
import ultralytics  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lightning_gradcam import GradCAMYOLOCallback  # noqa: E402
from lightning_gradcam.yolo.shapes import write_shapes_dataset  # noqa: E402


def one_run(data: Path, root: Path, metrics_on: str, epochs: int, size: int):
    """The wall time of ``yolo.train`` and Ultralytics' validation loops during it."""
    torch.manual_seed(0)
    yolo = ultralytics.YOLO("yolov8n.yaml")
    loops: list[float] = []
    started: list[float] = []

    def start(validator):
        started.append(time.perf_counter())

    def stop(validator):
        if getattr(validator, "training", False):
            loops.append(time.perf_counter() - started[-1])

    yolo.add_callback("on_val_start", start)
    yolo.add_callback("on_val_end", stop)  # before the callback's own on_val_end
    callback = GradCAMYOLOCallback(
        num_samples=4, methods=("gradcam",), conf=0.0, metrics_on=metrics_on
    ).attach(yolo)
    begin = time.perf_counter()
    yolo.train(
        data=str(data), epochs=epochs, imgsz=size, batch=8, workers=0, device="cpu",
        amp=False, plots=False, verbose=False, project=str(root), name=metrics_on,
        exist_ok=True, seed=0, deterministic=True, val=True,
    )  # fmt: skip
    total = time.perf_counter() - begin
    return total, statistics.median(loops), callback.whole_set.images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--val", type=int, default=32, help="validation images")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    logging.getLogger("ultralytics").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_shapes_dataset(
            root / "data", num_train=16, num_val=args.val, size=args.size, seed=0
        )
        times: dict[str, list[float]] = {"samples": [], "validation": []}
        loops, images = [], 0
        for _ in range(args.repeats):
            for mode in times:
                total, loop, measured = one_run(data, root / "runs", mode, args.epochs, args.size)
                times[mode].append(total)
                loops.append(loop)
                images = max(images, measured)
    t_samples, t_whole = (statistics.median(times[m]) for m in times)
    loop = statistics.median(loops)
    extra = (t_whole - t_samples) / args.epochs
    print(
        f"yolov8n, {images} validation images of {args.size} px: validation loop "
        f"{loop * 1000:.0f} ms, whole-set measure +{extra * 1000:.0f} ms an epoch, "
        f"ratio {extra / loop:.2f}x (runs: samples {t_samples:.1f} s, validation {t_whole:.1f} s)"
    )


if __name__ == "__main__":
    main()
