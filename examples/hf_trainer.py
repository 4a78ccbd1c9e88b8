"""The shortcut demo in the Hugging Face Trainer: keep the checkpoint that looks at the object.

    python examples/hf_trainer.py                  # about 15 s on one CPU core
    python examples/hf_trainer.py --epochs 12 --switch 6 --out runs/hf_trainer

Every image holds one shape (circle, square or triangle) on clutter; the shape is the class,
always. A small coloured mark sits in the top-left corner. Training runs in two phases, as
when a data set grows by a second source: for the first ``--switch`` epochs the training
images come from a source where the mark's colour is random, so only the shape tells the
class; from then on from a source where the mark's colour gives the class away. The
evaluation images are a held-out split of that second source, as a test split of the
shortcut data would be: the mark gives their class away too.

A tiny random ResNet (``AutoModelForImageClassification`` from a config) trains with
``GradCAMTrainerCallback``; every epoch is evaluated and saved, and ``metric_for_best_model``
is the callback's ``energy_in_box`` (the share of the Grad-CAM map inside the shape's box),
measured over all 128 evaluation images (``metrics_on="evaluation"``; ``--metrics-on
samples``: over the 32 fixed samples, whose overlays are drawn either way).
In the second phase the model learns to read the mark: accuracy rises, and the maps leave
the shape for the corner, so ``energy_in_box`` falls. Accuracy picks a checkpoint of the
second phase, the one that reads the mark; ``energy_in_box`` picks one of the first, which
looks at the shape, and the Trainer keeps it (``load_best_model_at_end``). The script
prints both choices with their accuracy, energy and pointing game, and writes
``curves.png`` (both curves per epoch, both choices marked) under ``--out``; the Trainer's
TensorBoard run there holds the overlays, grids and film strips.
"""

from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np
import torch
import transformers
from torch.utils.data import Dataset

try:
    from lightning_gradcam import GradCAMTrainerCallback
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lightning_gradcam import GradCAMTrainerCallback
from lightning_gradcam.core.synthetic import scene_mask
from lightning_gradcam.synthetic import SHAPE_NAMES, draw_scene

MARK_COLORS = ((255, 40, 40), (40, 255, 40), (40, 40, 255))  # one per class
MARK = 8  # the corner mark's side in pixels
FAINT = 12  # a faint shape: background noise, this much brighter
LAYER = "resnet.encoder.stages.1"  # the last stage of the tiny ResNet below (8x8 at 64 px)


class Scenes(Dataset):
    """Items ``{"pixel_values", "labels", "boxes"}``: one shape (the class, ``labels``; its
    box, ``boxes``) and a corner mark. ``shortcut`` says which source is served: the mark's
    colour random (``False``) or the class's (``True``); the scenes are the same."""

    def __init__(self, n: int, size: int, seed: int, shortcut: bool = True, faint: float = 0.3):
        rng = np.random.default_rng(seed)
        images, labels, boxes = [], [], []
        while len(images) < n:
            image, scene_boxes, kinds = draw_scene(rng, size, size, 1)
            x0, y0, _, _ = scene_boxes[0]
            if x0 < MARK + 2 and y0 < MARK + 2:
                continue  # the shape would cover the mark
            if rng.random() < faint:
                inside = scene_mask(size, size, scene_boxes, kinds) > 0
                noise = rng.random((int(inside.sum()), 3)) * 60 + 40 + FAINT
                image[inside] = noise.astype(np.uint8)
            images.append(image)
            labels.append(int(kinds[0]))
            boxes.append(scene_boxes[0])
        random_marks = rng.integers(0, len(MARK_COLORS), n)
        self.labels = torch.tensor(labels)
        self.boxes = torch.tensor(np.array(boxes)).float()
        self.sources = {
            False: _with_marks(images, random_marks),
            True: _with_marks(images, labels),
        }
        self.shortcut = shortcut

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pixels = self.sources[self.shortcut][i]
        return {"pixel_values": pixels, "labels": self.labels[i], "boxes": self.boxes[i]}


def _with_marks(images: list[np.ndarray], marks) -> torch.Tensor:
    marked = []
    for image, mark in zip(images, marks):
        image = image.copy()
        cv2.rectangle(image, (1, 1), (MARK, MARK), MARK_COLORS[int(mark)], -1)
        marked.append(image)
    return torch.from_numpy(np.stack(marked)).permute(0, 3, 1, 2).float().contiguous() / 255.0


class SwitchSource(transformers.TrainerCallback):
    """Serve the shortcut source of ``dataset`` from epoch ``at`` (0-based) on."""

    def __init__(self, dataset: Scenes, at: int):
        self.dataset, self.at = dataset, at

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.shortcut = round(state.epoch or 0) >= self.at


def tiny_resnet() -> transformers.PreTrainedModel:
    config = transformers.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[24, 48],
        depths=[1, 1],
        layer_type="basic",
        num_labels=len(SHAPE_NAMES),
    )
    return transformers.AutoModelForImageClassification.from_config(config)


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, -1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--switch", type=int, default=5, help="epochs on the first source")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--faint", type=float, default=0.3, help="share of faint shapes")
    parser.add_argument("--out", default="runs/hf_trainer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--metrics-on",
        choices=("evaluation", "samples"),
        default="evaluation",
        help="measure energy_in_box over every evaluation image, or the 32 fixed samples",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # faster for this tiny model, and the same numbers on any core count
    transformers.set_seed(args.seed)
    model = tiny_resnet()
    cam = GradCAMTrainerCallback(
        layer=LAYER, methods=("gradcam",), num_samples=32, metrics_on=args.metrics_on
    )
    metric = f"gradcam/{LAYER}/gradcam/energy_in_box"
    training = transformers.TrainingArguments(
        output_dir=args.out,
        use_cpu=True,
        report_to=["tensorboard"],
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        logging_strategy="epoch",
        seed=args.seed,
        disable_tqdm=True,
    )
    train = Scenes(args.train, args.size, args.seed + 1, shortcut=False, faint=args.faint)
    trainer = transformers.Trainer(
        model=model,
        args=training,
        train_dataset=train,
        eval_dataset=Scenes(128, args.size, args.seed + 2, shortcut=True, faint=args.faint),
        compute_metrics=accuracy,
        callbacks=[SwitchSource(train, args.switch), cam],
    )
    trainer.train()
    return report(trainer, cam, args.out)


def report(trainer: transformers.Trainer, cam: GradCAMTrainerCallback, out: str) -> dict:
    """Print the per-epoch table and both choices; draw the curves; return the numbers."""
    prefix = f"eval_gradcam/{cam.task.layer_name}/gradcam"
    evals = [e for e in trainer.state.log_history if f"{prefix}/energy_in_box" in e]
    rows = [
        {
            "epoch": round(e["epoch"]),
            "step": e["step"],
            "accuracy": e["eval_accuracy"],
            "energy_in_box": e[f"{prefix}/energy_in_box"],
            "pointing_game": e[f"{prefix}/pointing_game"],
        }
        for e in evals
    ]
    print(f"layer {cam.task.layer_name}")
    for r in rows:
        print(
            f"epoch {r['epoch']:2d}  step {r['step']:4d}  accuracy {r['accuracy']:.3f}  "
            f"energy_in_box {r['energy_in_box']:.3f}  pointing_game {r['pointing_game']:.3f}"
        )
    # np.argmax keeps the first of equal values, as the Trainer's strict np.greater does.
    best = {
        "energy": rows[int(np.argmax([r["energy_in_box"] for r in rows]))],
        "accuracy": rows[int(np.argmax([r["accuracy"] for r in rows]))],
    }
    kept = os.path.basename(trainer.state.best_model_checkpoint)
    for name, r in best.items():
        print(
            f"best by {name + ':':9} epoch {r['epoch']:2d}, step {r['step']:4d}  "
            f"(accuracy {r['accuracy']:.3f}, energy_in_box {r['energy_in_box']:.3f}, "
            f"pointing_game {r['pointing_game']:.3f})"
        )
    print(f"the Trainer kept {kept}")
    draw_curves(os.path.join(out, "curves.png"), rows, best)
    return {
        "rows": rows,
        "by_energy": best["energy"],
        "by_accuracy": best["accuracy"],
        "kept": kept,
        "images": cam.whole_set.images,  # what the scalars are over (0: the fixed samples)
    }


def draw_curves(path: str, rows: list[dict], best: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    ax.plot(epochs, [r["accuracy"] for r in rows], "o-", label="eval accuracy")
    ax.plot(epochs, [r["energy_in_box"] for r in rows], "s-", label="gradcam energy_in_box")
    for name, style, color in (("accuracy", ":", "C0"), ("energy", "--", "C1")):
        epoch = best[name]["epoch"]
        ax.axvline(epoch, color=color, ls=style, label=f"best by {name} (epoch {epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Hugging Face Trainer, shortcut data: which checkpoint to keep", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
