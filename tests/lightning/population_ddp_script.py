"""Run by test_callback_population_ddp.py: GradCAMCallback(metrics_on="validation") in a fit
whose weights do not move (lr 0, BatchNorm momentum 0), on 1 process or 2 DDP processes.

Usage: python population_ddp_script.py OUT_DIR DEVICES. Lightning's ``strategy="ddp"``
re-launches this script for rank 1. Each rank writes ``rank_<r>.json``: what a monitor sees.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytorch_lightning as pl  # noqa: E402
from cam_tiny import LAYER, TinyPL, val_loader  # noqa: E402
from torch import nn  # noqa: E402

from lightning_gradcam import GradCAMCallback  # noqa: E402


def main(out: str, devices: int) -> None:
    pl.seed_everything(0, verbose=False)
    module = TinyPL(lr=0.0)  # the same weights on every rank and in one process
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = 0.0  # running statistics stay as initialised
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4, metrics_on="validation")
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        default_root_dir=out,  # the PNG folder the callback falls back to
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
    )
    trainer.fit(module, val_dataloaders=val_loader(24, 8))
    report = {
        "rank": trainer.global_rank,
        "images": cb.whole_set.images,
        "metrics": {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("gradcam/")
        },
    }
    with open(os.path.join(out, f"rank_{trainer.global_rank}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
