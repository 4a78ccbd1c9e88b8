"""The shortcut demo in the Hugging Face Trainer: keep the checkpoint that looks at the object.

    python examples/hf_trainer.py                  # ~2.5 minutes on 2 shared CPU cores
    python examples/hf_trainer.py --epochs 10 --out runs/hf_trainer

Every image holds one shape (circle, square or triangle) on clutter; the shape is the class.
A small coloured mark in the top-left corner gives the class away too: in the training data
its colour always agrees with the label, in the validation data for ``--agree`` of the images
(a shortcut that mostly holds). A tiny random ResNet (``AutoModelForImageClassification``
from a config) trains with ``GradCAMTrainerCallback``; every epoch is evaluated and saved.
``metric_for_best_model`` on the callback's ``energy_in_box`` (the share of the map inside the
shape's box) picks the checkpoint that looks at the shape; accuracy, which the mark props up,
may pick another. The script prints both choices and writes ``curves.png`` (accuracy and
energy in the box per epoch, both choices marked) under ``--out``; the Trainer's TensorBoard
run there holds the overlays, grids and film strips.
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
from lightning_gradcam.synthetic import draw_scene

MARK_COLORS = ((255, 40, 40), (40, 255, 40), (40, 40, 255))  # one per class
MARK = 8


class Scenes(Dataset):
    """Items ``{"pixel_values", "labels", "boxes"}``: a shape (the class) and a corner mark
    whose colour agrees with the class for a share ``agree`` of the images."""

    def __init__(self, n: int, size: int, seed: int, agree: float):
        rng = np.random.default_rng(seed)
        images, labels, boxes = [], [], []
        while len(images) < n:
            image, scene_boxes, kinds = draw_scene(rng, size, size, 1)
            x0, y0, _, _ = scene_boxes[0]
            if x0 < MARK + 2 and y0 < MARK + 2:
                continue  # the shape would cover the mark
            label = int(kinds[0])
            mark = label if rng.random() < agree else int(rng.integers(0, len(MARK_COLORS)))
            cv2.rectangle(image, (1, 1), (MARK, MARK), MARK_COLORS[mark], -1)
            images.append(image)
            labels.append(label)
            boxes.append(scene_boxes[0])
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        self.images, self.labels = pixels.contiguous(), torch.tensor(labels)
        self.boxes = torch.tensor(np.array(boxes)).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[i], "labels": self.labels[i], "boxes": self.boxes[i]}


LAYER = "resnet.encoder.stages.2"  # the last stage of the tiny ResNet below


def tiny_resnet() -> transformers.PreTrainedModel:
    config = transformers.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        num_labels=len(MARK_COLORS),
    )
    return transformers.AutoModelForImageClassification.from_config(config)


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    logits = (
        prediction.predictions[0]
        if isinstance(prediction.predictions, tuple)
        else (prediction.predictions)
    )
    return {"accuracy": float((np.argmax(logits, -1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=384)
    parser.add_argument("--agree", type=float, default=0.8)
    parser.add_argument("--out", default="runs/hf_trainer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    transformers.set_seed(args.seed)
    model = tiny_resnet()
    cam = GradCAMTrainerCallback(layer=LAYER, methods=("gradcam",), num_samples=32)
    metric = f"gradcam/{LAYER}/gradcam/energy_in_box"
    training = transformers.TrainingArguments(
        output_dir=args.out,
        use_cpu=True,
        report_to=["tensorboard"],
        num_train_epochs=args.epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=3e-3,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        logging_strategy="epoch",
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model,
        args=training,
        train_dataset=Scenes(args.train, args.size, args.seed + 1, agree=1.0),
        eval_dataset=Scenes(128, args.size, args.seed + 2, agree=args.agree),
        compute_metrics=accuracy,
        callbacks=[cam],
    )
    trainer.train()
    layer = cam.task.layer_name
    key = f"eval_gradcam/{layer}/gradcam/energy_in_box"
    evals = [e for e in trainer.state.log_history if key in e]
    epochs = [round(e["epoch"]) for e in evals]
    acc = [e["eval_accuracy"] for e in evals]
    energy = [e[key] for e in evals]
    by_energy = epochs[int(np.argmax(energy))]
    by_accuracy = epochs[int(np.argmax(acc))]
    print(f"layer {layer}")
    for epoch, a, e in zip(epochs, acc, energy):
        print(f"epoch {epoch:2d}  accuracy {a:.3f}  energy_in_box {e:.3f}")
    print(f"best by energy_in_box: epoch {by_energy} (the Trainer kept "
          f"{os.path.basename(trainer.state.best_model_checkpoint)}); "
          f"best by accuracy: epoch {by_accuracy}")  # fmt: skip
    draw_curves(os.path.join(args.out, "curves.png"), epochs, acc, energy, by_energy, by_accuracy)
    return {"by_energy": by_energy, "by_accuracy": by_accuracy}


def draw_curves(path, epochs, acc, energy, by_energy, by_accuracy) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot(epochs, acc, "o-", label="eval accuracy")
    ax.plot(epochs, energy, "s-", label="gradcam energy_in_box")
    ax.axvline(by_accuracy, color="C0", ls=":", label=f"best by accuracy (epoch {by_accuracy})")
    ax.axvline(by_energy, color="C1", ls="--", label=f"best by energy (epoch {by_energy})")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Hugging Face Trainer, shortcut data: which checkpoint to keep")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
