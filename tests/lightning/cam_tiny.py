"""A tiny shapes classifier as a LightningModule for either Lightning package, plus data.

Module-level classes (``TinyPL`` for ``pytorch_lightning``, ``TinyL`` for
``lightning.pytorch``) so they pickle; also imported by the DDP script.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_gradcam.synthetic import make_shapes

SIZE = 32
TRAIN_IMAGES = 48
VAL_IMAGES = 16
BATCH = 16
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH
LAYER = "net.features.block2"


def make_net() -> nn.Sequential:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    features = nn.Sequential(
        OrderedDict(block1=block(3, 8), pool=nn.MaxPool2d(2), block2=block(8, 16))
    )
    return nn.Sequential(
        OrderedDict(
            features=features,
            gap=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            drop=nn.Dropout(0.3),
            fc=nn.Linear(16, 3),
        )
    )


class DictShapes(Dataset):
    """make_shapes as dict samples with the deciding object's box."""

    def __init__(self, num_images: int, seed: int):
        self.data = make_shapes(num_images, size=SIZE, seed=seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        d = self.data
        return {"image": d.images[i], "label": d.labels[i], "boxes": d.boxes[i]}


def build_module_class(pl, name: str):
    class Tiny(pl.LightningModule):
        def __init__(
            self,
            lr: float = 0.05,
            with_val: bool = True,
            freeze: bool = False,
            compile_net: bool = False,
        ):
            super().__init__()
            self.net = make_net()
            if freeze:
                for p in self.net.features.parameters():
                    p.requires_grad_(False)
            if compile_net:
                self.net = torch.compile(self.net, backend="eager")
            self.lr = lr
            self.with_val = with_val
            self.train_steps = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        @staticmethod
        def _xy(batch):
            if isinstance(batch, dict):
                return batch["image"], batch["label"]
            return batch[0], batch[1]

        def training_step(self, batch, batch_idx):
            self.train_steps += 1
            x, y = self._xy(batch)
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = self._xy(batch)
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self):
            params = [p for p in self.parameters() if p.requires_grad]
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9)

        def train_dataloader(self):
            return DataLoader(DictShapes(TRAIN_IMAGES, seed=0), batch_size=BATCH, shuffle=True)

    Tiny.__name__ = Tiny.__qualname__ = name
    Tiny.__module__ = __name__
    return Tiny


def val_loader(num_images: int = VAL_IMAGES, batch_size: int = BATCH) -> DataLoader:
    return DataLoader(DictShapes(num_images, seed=1), batch_size=batch_size)


import lightning.pytorch as _lp  # noqa: E402
import pytorch_lightning as _pl  # noqa: E402

TinyPL = build_module_class(_pl, "TinyPL")
TinyL = build_module_class(_lp, "TinyL")
