"""Cost of ``GradCAMCallback(metrics_on="validation")`` inside real ``Trainer.fit`` runs: the
extra time of a measured validation epoch against the validation epoch's own time.

    ratio = (t_measured - t_plain) / t_plain

``t``: the validation loop of one epoch as Lightning runs it inside ``fit`` (the module's
own ``validation_step``: forward, loss, accuracy, ``self.log``), from the epoch's start to
the end of its last batch; the fixed samples' pictures pass at the epoch's end is left out
(it is the same in both modes). Variants, each a fit of its own with the same weights and
batches:

* ``plain``: no callback;
* ``measured``: ``GradCAMCallback(metrics_on="validation")`` with the task's default methods
  (Grad-CAM and Grad-CAM++; Grad-CAM and HiResCAM for segmentation). From the second
  measured batch on, the measure reuses the forward
  of ``validation_step`` (``core.tap``) and adds one backward from the scores to the layer,
  the maps and the sums;
* ``own forward``: the same, with the tap switched off, so each batch also gets the measure's
  own forward (what a ``validation_step`` that does not call the network on the batch's
  images costs).

Each fit runs ``--epochs`` epochs; the first epoch is warm-up and left out, the others'
median is taken; variants alternate ``--repeats`` times, medians of those. Models, random
init, CPU: torchvision ResNet-50 at ``layer4`` (batch 16, 224 px, ``--batches`` validation
batches), the demo CNN of ``examples/lightning_shapes.py`` at ``net.features.block3``
(batch 32, 64 px, 10 batches), and a torchvision LR-ASPP MobileNetV3 segmenter at its
default layer (batch 8, 128 px, 4 batches; masks with two classes on background). Target
(issue 28, for the two classifiers): ratio <= 1.25.

    python benchmarks/validation_metrics.py [--repeats 2] [--epochs 4] [--batches 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examples.lightning_shapes import small_cnn  # noqa: E402
from lightning_gradcam import GradCAMCallback  # noqa: E402
from lightning_gradcam.tasks.population import (  # noqa: E402
    ClassificationMeasure,
    SegmentationMeasure,
)


class Classifier(pl.LightningModule):
    def __init__(self, make_net: Callable[[], nn.Module]):
        super().__init__()
        self.net = make_net()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        return nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels, _ = batch
        logits = self(images)
        self.log("val_loss", nn.functional.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(1) == labels).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class Segmenter(pl.LightningModule):
    """A torchvision LR-ASPP (MobileNetV3-Large, random init) on ``(images, masks)``."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=classes
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images, masks = batch
        return nn.functional.cross_entropy(self(images)["out"], masks)

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        logits = self(images)["out"]
        self.log("val_loss", nn.functional.cross_entropy(logits, masks))
        self.log("val_acc", (logits.argmax(1) == masks).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class LoopTimer(pl.Callback):
    """Seconds from each validation epoch's start to the end of its last batch (outside the
    sanity check); listed last, so its batch end follows the measure's."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self._start = self._end = 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        self._end = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epochs.append(self._end - self._start)


def _loader(count: int, batch: int, size: int, classes: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(count * batch, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (count * batch,), generator=g)
    box = torch.tensor([size * 0.2, size * 0.2, size * 0.7, size * 0.8])
    return DataLoader(TensorDataset(images, labels, box.repeat(count * batch, 1)), batch_size=batch)


def _mask_loader(count: int, batch: int, size: int) -> DataLoader:
    """Random images, each with a square of class 1 and a bar of class 2 on class 0."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(count * batch, 3, size, size, generator=g)
    masks = torch.zeros(count * batch, size, size, dtype=torch.long)
    masks[:, size // 8 : size // 2, size // 8 : size // 2] = 1
    masks[:, 3 * size // 4 :, size // 4 :] = 2
    return DataLoader(TensorDataset(images, masks), batch_size=batch)


def _fit(make_module, layer, val, train, variant: str, epochs: int, root: str) -> float:
    torch.manual_seed(0)
    timer = LoopTimer()
    callbacks: list[pl.Callback] = []
    if variant != "plain":
        callbacks.append(GradCAMCallback(layer=layer, metrics_on="validation"))
    callbacks.append(timer)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_train_batches=1,
        default_root_dir=root,  # the callback's PNG files, without a logger
    )
    taps = {kind: kind.tap for kind in (ClassificationMeasure, SegmentationMeasure)}
    if variant == "own forward":
        for kind in taps:
            kind.tap = lambda self, network, batch: None
    try:
        trainer.fit(make_module(), train, val)
    finally:
        for kind, tap in taps.items():
            kind.tap = tap
    return statistics.median(timer.epochs[1:])


def bench(name: str, make_module, layer, val, train, repeats: int, epochs: int) -> None:
    variants = ("plain", "measured", "own forward")
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            with tempfile.TemporaryDirectory() as root:
                times[variant].append(_fit(make_module, layer, val, train, variant, epochs, root))
    t = {v: statistics.median(times[v]) for v in variants}
    images = len(val.dataset)
    print(f"{name}: {len(val)} validation batches ({images} images), validation loop per epoch:")
    for variant in variants:
        ratio = (t[variant] - t["plain"]) / t["plain"]
        extra = "" if variant == "plain" else f"  ratio {ratio:.2f}"
        print(f"  {variant:12s} {t[variant]:.3f} s{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="per fit; the first is warm-up")
    parser.add_argument("--batches", type=int, default=3, help="ResNet-50 validation batches")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's few-workers and small-batch advice
    for name in ("pytorch_lightning", "lightning.pytorch"):  # its per-fit banner lines
        logging.getLogger(name).setLevel(logging.ERROR)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; target ratio <= 1.25"
    )
    bench(
        "demo CNN at net.features.block3, batch 32, 64 px",
        lambda: Classifier(small_cnn),
        "net.features.block3",
        _loader(10, 32, 64, 3),
        _loader(1, 32, 64, 3),
        args.repeats,
        args.epochs,
    )
    bench(
        "ResNet-50 at net.layer4, batch 16, 224 px",
        lambda: Classifier(lambda: torchvision.models.resnet50(weights=None)),
        "net.layer4",
        _loader(args.batches, 16, 224, 1000),
        _loader(1, 2, 224, 1000),
        args.repeats,
        args.epochs,
    )
    bench(
        "LR-ASPP MobileNetV3 segmenter, default layer, batch 8, 128 px",
        Segmenter,
        None,
        _mask_loader(4, 8, 128),
        _mask_loader(1, 2, 128),
        args.repeats,
        args.epochs,
    )


if __name__ == "__main__":
    main()
