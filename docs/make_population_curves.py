"""Make docs/images/population_curves.png: the shortcut demo's attention curves measured on
the 8 fixed samples (``metrics_on="samples"``) and on the whole validation set
(``metrics_on="validation"``, 128 images), from the same runs (two callbacks in one Trainer:
the CAM passes leave training bit-identical, so both watch the same weights).

    python docs/make_population_curves.py [--epochs 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from examples.shortcut import LAYER, Classifier, ScenesDataset, make_scenes  # noqa: E402
from lightning_gradcam import GradCAMCallback  # noqa: E402

NAMES = ("pointing_game", "energy_in_box")


def run(name: str, epochs: int, out: str) -> dict[str, dict[str, list[float]]]:
    """{"samples"/"validation": {scalar: one value per epoch}} of the ``name`` run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0, verbose=False)
    shortcut = name == "shortcut"
    train = make_scenes(640, 64, 0, shortcut)
    val = make_scenes(128, 64, 1, shortcut)
    callbacks = [
        GradCAMCallback(layer=LAYER, methods="gradcam", tag_prefix=kind, metrics_on=kind)
        for kind in ("samples", "validation")
    ]
    logger = TensorBoardLogger(out, name=name, default_hp_metric=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=5,
    )
    trainer.fit(
        Classifier(),
        DataLoader(ScenesDataset(train), batch_size=32, shuffle=True),
        DataLoader(ScenesDataset(val), batch_size=64),
    )
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    curves: dict[str, dict[str, list[float]]] = {}
    for kind in ("samples", "validation"):
        curves[kind] = {}
        for scalar in NAMES:
            values = events.Scalars(f"{kind}/{LAYER}/gradcam/{scalar}")
            curves[kind][scalar] = [e.value for e in sorted(values, key=lambda e: e.step)][:epochs]
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default=os.path.join(HERE, "images", "population_curves.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: run(name, args.epochs, tmp) for name in ("clean", "shortcut")}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, scalar in zip(axes, NAMES):
        for name, colour in (("clean", "tab:blue"), ("shortcut", "tab:red")):
            for kind, style in (("samples", ":s"), ("validation", "-o")):
                label = f"{name}, {'8 samples' if kind == 'samples' else 'whole set (128)'}"
                values = runs[name][kind][scalar]
                axis.plot(range(len(values)), values, style, color=colour, label=label)
                print(name, kind, scalar, " ".join(f"{v:.3f}" for v in values))
        axis.set_title(scalar)
        axis.set_xlabel("epoch")
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
