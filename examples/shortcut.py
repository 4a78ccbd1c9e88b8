"""Catch a shortcut that accuracy hides: the same CNN trained twice, watched by GradCAMCallback.

    python examples/shortcut.py                  # both runs, ~1 minute on 2 CPU cores
    python examples/shortcut.py --epochs 8 --out runs/shortcut

Every image holds one shape (circle, square or triangle) on clutter and a small coloured
mark in its top-left corner. In the *clean* data the shape decides the class and the mark's
colour is random; in the *shortcut* data the mark's colour decides the class and the shape is
drawn at random. Both runs reach high validation accuracy, so accuracy cannot tell them apart;
the callback's ``pointing_game`` (share of images whose map peaks inside the object's box)
and ``energy_in_box`` can: the clean model looks at the object, the shortcut model at the
corner. The shortcut run's ``alarm`` warns, naming the images, when the pointing game falls
below 0.5; ``ModelCheckpoint(monitor=...)`` could keep the epoch that looks best.

Writes, under ``--out``: TensorBoard logs per run, the film strips of both runs, and
``curves.png`` (both runs' pointing game and energy in the box per epoch).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

try:
    from lightning_gradcam import GradCAMCallback
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lightning_gradcam import GradCAMCallback
from lightning_gradcam.synthetic import SHAPE_NAMES, draw_scene

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lightning_shapes import small_cnn  # noqa: E402  (the demo's CNN, wider)

LAYER = "net.features.block3"
MARK_COLORS = ((255, 40, 40), (40, 255, 40), (40, 40, 255))  # one per class
MARK = 8  # the corner mark's side in pixels
RUNS = ("clean", "shortcut")


@dataclass
class Scenes:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    labels: torch.Tensor  # (N,)
    boxes: torch.Tensor  # (N, 4): the object's box, where a person says the class is


def make_scenes(num_images: int, size: int, seed: int, shortcut: bool) -> Scenes:
    """One shape per image and a corner mark; ``shortcut`` picks what decides the label:
    the mark's colour (the shape then random) or the shape (the mark's colour then random).
    Both datasets have the same picture statistics, only the rule differs."""
    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    while len(images) < num_images:
        image, scene_boxes, kinds = draw_scene(rng, size, size, 1)
        x0, y0, _, _ = scene_boxes[0]
        if x0 < MARK + 2 and y0 < MARK + 2:
            continue  # the shape would cover the mark
        mark_class = int(rng.integers(0, len(MARK_COLORS)))
        cv2.rectangle(image, (1, 1), (MARK, MARK), MARK_COLORS[mark_class], -1)
        images.append(image)
        labels.append(mark_class if shortcut else kinds[0])
        boxes.append(scene_boxes[0])
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return Scenes(pixels.contiguous(), torch.tensor(labels), torch.tensor(boxes).float())


class ScenesDataset(Dataset):
    def __init__(self, scenes: Scenes):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.scenes
        return {"image": s.images[i], "label": s.labels[i], "boxes": s.boxes[i]}


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.01):
        super().__init__()
        self.lr = lr
        self.net = small_cnn(widths=(16, 32, 32))
        self.val_accuracy: list[float] = []
        self._correct = self._seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        logits = self(batch["image"])
        accuracy = (logits.argmax(1) == batch["label"]).float().mean()
        self.log("val/accuracy", accuracy, prog_bar=True)
        self._correct += int((logits.argmax(1) == batch["label"]).sum())
        self._seen += len(batch["label"])

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_accuracy.append(self._correct / max(self._seen, 1))
        self._correct = self._seen = 0

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@dataclass
class RunResult:
    name: str
    callback: GradCAMCallback
    accuracy: list[float]  # validation accuracy per epoch
    alarms: list[str]  # the callback's alarm warnings
    log_dir: str


def train(
    name: str,
    epochs: int,
    out: str,
    train_images: int = 640,
    size: int = 64,
    seed: int = 0,
    quiet: bool = True,
) -> RunResult:
    """Train the small CNN on the ``name`` ("clean" or "shortcut") data with the callback."""
    pl.seed_everything(seed, verbose=False)
    shortcut = name == "shortcut"
    train_data = make_scenes(train_images, size, seed, shortcut)
    val_data = make_scenes(128, size, seed + 1, shortcut)
    callback = GradCAMCallback(
        layer=LAYER,
        methods=("gradcam",),
        num_samples=8,
        class_names=[f"{c} (mark)" for c in ("red", "green", "blue")] if shortcut else SHAPE_NAMES,
        alarm={"pointing_game": 0.5},
        alarm_after_epoch=2,
    )
    logger = TensorBoardLogger(out, name=name, default_hp_metric=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not quiet,
        log_every_n_steps=5,
    )
    module = Classifier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(
            module,
            DataLoader(ScenesDataset(train_data), batch_size=32, shuffle=True),
            DataLoader(ScenesDataset(val_data), batch_size=64),
        )
    alarms = [str(w.message) for w in caught if "GradCAMCallback alarm" in str(w.message)]
    for message in alarms:
        print(f"[{name}] {message}")
    return RunResult(name, callback, module.val_accuracy, alarms, logger.log_dir)


def series(run: RunResult, name: str) -> list[float]:
    """One value per validation epoch of the callback scalar ``name`` (gradcam)."""
    passes = run.callback.history[: len(run.accuracy)]  # not the final pass at the same step
    return [entry["scalars"]["gradcam"].get(name, float("nan")) for entry in passes]


def plot_curves(runs: list[RunResult], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for run, style in zip(runs, ("-o", "--s")):
        epochs = range(len(run.accuracy))
        axes[0].plot(epochs, run.accuracy, style, label=run.name)
        axes[1].plot(epochs, series(run, "pointing_game"), style, label=run.name)
        axes[2].plot(epochs, series(run, "energy_in_box"), style, label=run.name)
    for axis, title in zip(axes, ("validation accuracy", "pointing_game", "energy_in_box")):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(runs: list[RunResult]) -> None:
    print("\nrun       epoch  accuracy  pointing_game  energy_in_box")
    for run in runs:
        pointing, energy = series(run, "pointing_game"), series(run, "energy_in_box")
        for epoch, accuracy in enumerate(run.accuracy):
            print(
                f"{run.name:9} {epoch:5d}  {accuracy:8.3f}  {pointing[epoch]:13.3f}  "
                f"{energy[epoch]:13.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per run")
    parser.add_argument("--out", default="runs/shortcut", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs = [train(name, args.epochs, args.out, seed=args.seed) for name in RUNS]
    print_table(runs)
    os.makedirs(args.out, exist_ok=True)
    for run in runs:
        path = os.path.join(args.out, f"filmstrip_{run.name}.png")
        cv2.imwrite(path, cv2.cvtColor(run.callback.filmstrip("gradcam"), cv2.COLOR_RGB2BGR))
        print(f"film strip ({run.name}): {path}")
    curves = os.path.join(args.out, "curves.png")
    plot_curves(runs, curves)
    print(f"curves: {curves}")
    print(f"\nTensorBoard: tensorboard --logdir {args.out} --samples_per_plugin images=100")


if __name__ == "__main__":
    main()
