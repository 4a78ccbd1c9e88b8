"""Watch a small CNN learn where to look: GradCAMCallback on the synthetic shapes task.

    python examples/lightning_shapes.py                 # ~1 minute on 2 CPU cores
    python examples/lightning_shapes.py --epochs 10 --out runs/shapes

Each image holds one shape (circle, square or triangle) on a cluttered background; the class
is the shape, so a network that learns the task must look at the object, whose box is known.
The callback explains 8 fixed validation images after every epoch and logs overlays, drift
and the share of the map inside the box to TensorBoard; this script also saves a film strip
(rows = images, columns = epochs) next to the logs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict

import cv2
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
from lightning_gradcam.synthetic import SHAPE_NAMES, make_shapes

LAYER = "net.features.block3"


class ShapesWithBoxes(Dataset):
    """Dict samples ``{"image", "label", "boxes"}``: the callback's default batch parser
    finds all three, so the in-box energy is logged without further arguments."""

    def __init__(self, num_images: int, size: int, seed: int):
        self.data = make_shapes(num_images, size=size, seed=seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        d = self.data
        return {"image": d.images[index], "label": d.labels[index], "boxes": d.boxes[index]}


def small_cnn(
    num_classes: int = len(SHAPE_NAMES), widths: tuple[int, int, int] = (8, 16, 32)
) -> nn.Sequential:
    """Three conv + BatchNorm + ReLU blocks of ``widths`` channels (two max-pools between),
    global average pooling, a linear layer: Grad-CAM at ``features.block3``."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    w1, w2, w3 = widths
    features = nn.Sequential(
        OrderedDict(
            block1=block(3, w1),
            pool1=nn.MaxPool2d(2),
            block2=block(w1, w2),
            pool2=nn.MaxPool2d(2),
            block3=block(w2, w3),
        )
    )
    return nn.Sequential(
        OrderedDict(
            features=features,
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(w3, num_classes),
        )
    )


class ShapesClassifier(pl.LightningModule):
    def __init__(self, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = small_cnn()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = nn.functional.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(dim=1) == batch["label"]).float().mean()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/accuracy", accuracy, prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._loss(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    parser.add_argument("--out", default="runs/lightning_shapes", help="log directory")
    parser.add_argument("--train-images", type=int, default=640, help="training set size")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args()


def print_curves(callback: GradCAMCallback) -> None:
    """The in-box energy, pointing game and drift series the callback logged, as a table."""
    names = ("energy_in_box", "pointing_game", "drift_vs_prev", "drift_vs_first")
    for method in callback.methods:
        print(f"\n{method}: epoch  " + "  ".join(f"{name:>14}" for name in names))
        for entry in callback.history:
            values = entry["scalars"][method]
            cells = [f"{values[name]:14.3f}" if name in values else f"{'-':>14}" for name in names]
            print(f"{'':{len(method)}}  {entry['epoch']:5d}  " + "  ".join(cells))


def main() -> None:
    args = parse_args()
    pl.seed_everything(args.seed, verbose=False)
    train = DataLoader(
        ShapesWithBoxes(args.train_images, args.size, seed=args.seed),
        batch_size=32,
        shuffle=True,
    )
    val = DataLoader(ShapesWithBoxes(128, args.size, seed=args.seed + 1), batch_size=64)

    callback = GradCAMCallback(
        layer=LAYER,
        methods=("gradcam", "gradcam++"),
        num_samples=8,
        class_names=SHAPE_NAMES,
        max_image_size=256,
    )
    logger = TensorBoardLogger(args.out, name="", default_hp_metric=False)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.quiet,
        log_every_n_steps=5,
    )
    start = time.perf_counter()
    trainer.fit(ShapesClassifier(), train, val)
    elapsed = time.perf_counter() - start

    log_dir = logger.log_dir
    print(f"\nTrained {args.epochs} epochs in {elapsed:.0f} s; logs in {log_dir}")
    print_curves(callback)
    for method in callback.methods:
        path = os.path.join(log_dir, f"filmstrip_{method.replace('+', 'p')}.png")
        strip = callback.filmstrip(method)
        cv2.imwrite(path, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        print(f"film strip ({method}): {path}")
    print("\nOpen TensorBoard (all epochs' images, not only 10 per tag):")
    print(f"  tensorboard --logdir {args.out} --samples_per_plugin images=100")


if __name__ == "__main__":
    main()
