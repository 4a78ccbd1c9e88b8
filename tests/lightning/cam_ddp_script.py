"""Run by test_callback_ddp.py: 2-process CPU DDP fit with GradCAMCallback.

Usage: python cam_ddp_script.py OUT_DIR. Lightning's ``strategy="ddp"`` re-launches this
script for rank 1. Each rank writes ``rank_<r>.json`` with what its callback did.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytorch_lightning as pl  # noqa: E402
from cam_tiny import LAYER, TinyPL, val_loader  # noqa: E402

from lightning_gradcam import GradCAMCallback  # noqa: E402


def main(out: str) -> None:
    pl.seed_everything(0, verbose=False)
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=pl.loggers.TensorBoardLogger(out, name="tb", version=0),
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
    )
    trainer.fit(TinyPL(), val_dataloaders=val_loader())
    state = cb.state_dict()  # what the checkpoint would hold
    report = {
        "rank": trainer.global_rank,
        "cam_count": state["cam_count"],
        "eval_count": state["eval_count"],
        "has_samples": state["samples"] is not None,
        "global_step": trainer.global_step,
        # What a monitor (ModelCheckpoint, EarlyStopping) sees on this rank.
        "metrics": {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("gradcam/")
        },
    }
    with open(os.path.join(out, f"rank_{trainer.global_rank}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1])
