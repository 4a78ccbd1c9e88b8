"""Regenerate the pictures of docs/segmentation.md (about a minute on one CPU core):

    python docs/make_segmentation_images.py     # writes docs/images/segmentation_filmstrip.png
                                                # and docs/images/segmentation_energy.png

A small segmenter (four convs at half resolution, a 1x1 classifier, the logits upsampled) is
trained on generated scenes of up to two shapes (circle, square, triangle; the class of a
pixel is the shape it belongs to, 0 the background). Before training and after each epoch,
``SegmentationTask`` (what ``GradCAMCallback`` runs on a segmenter) explains four fixed
validation scenes, one map per (scene, ground-truth class), and measures ``energy_in_mask``:
the share of each class's map inside that class's ground-truth mask. The script prints it per
epoch with the pixel accuracy, and saves the Grad-CAM film strip (rows: scene and class, the
input with the mask outlined first; columns: passes) and the curve of ``energy_in_mask``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "images"

from lightning_gradcam.core.synthetic import SHAPE_NAMES, make_segmentation_shapes  # noqa: E402
from lightning_gradcam.tasks.base import TaskOptions  # noqa: E402
from lightning_gradcam.tasks.segmentation import SegmentationTask  # noqa: E402

METHODS = ("gradcam", "hirescam", "layercam", "gradcam++")


class Segmenter(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=4, dilation=4),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _energy_plot(epochs: list[int], curves: dict[str, list[float]], floor: float) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3), dpi=100)
    for method, values in curves.items():
        axes.plot(epochs, values, marker="o", label=method)
    axes.axhline(floor, color="grey", linestyle="--", label="a uniform map")
    axes.set_xlabel("epoch (0: before training)")
    axes.set_ylabel("energy_in_mask")
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    figure.canvas.draw()
    picture = np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(figure)
    return picture


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    train = make_segmentation_shapes(args.train_images, args.size, seed=0, num_objects=2)
    fixed = make_segmentation_shapes(4, args.size, seed=1, num_objects=2)
    model = Segmenter(len(SHAPE_NAMES) + 1)
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    names = ("background", *SHAPE_NAMES)
    task = SegmentationTask(TaskOptions(methods=METHODS, class_names=names, filmstrip_size=64))
    samples = task.parse_batch((fixed.images, fixed.masks))
    task.check_samples(samples)
    curves: dict[str, list[float]] = {m: [] for m in METHODS}
    start = time.time()
    for epoch in range(args.epochs + 1):
        if epoch:
            model.train()
            for first in range(0, len(train), 32):
                images = train.images[first : first + 32]
                loss = F.cross_entropy(model(images), train.masks[first : first + 32])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        report = task.report(task.explain(model, samples), samples, step=epoch, epoch=epoch)
        with torch.no_grad():
            accuracy = float((model.eval()(fixed.images).argmax(1) == fixed.masks).float().mean())
        for method in METHODS:
            curves[method].append(report.scalars.get(f"{method}/energy_in_mask", float("nan")))
        energy = "  ".join(f"{m} {curves[m][-1]:.3f}" for m in METHODS)
        print(f"epoch {epoch}: pixel accuracy {accuracy:.3f}  energy_in_mask {energy}")
    pairs = [(i, c) for i, row in enumerate(samples.classes(0)) for c in row]
    floor = float(np.mean([float((samples.masks[i] == c).float().mean()) for i, c in pairs]))
    print(f"a uniform map would put {floor:.3f} in the mask; {time.time() - start:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    pictures = {
        "segmentation_filmstrip.png": task.filmstrip("gradcam"),
        "segmentation_energy.png": _energy_plot(list(range(args.epochs + 1)), curves, floor),
    }
    for name, picture in pictures.items():
        path = args.out / name
        cv2.imwrite(str(path), picture[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"wrote {path} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
