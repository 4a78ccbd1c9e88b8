"""Cost of ``GradCAMTrainerCallback(metrics_on="evaluation")`` in real ``transformers.Trainer``
runs: the extra time of measuring the whole evaluation set, against the evaluation's own time.

    ratio = (t_evaluation - t_samples) / (evaluations * eval_runtime)

``t_samples`` / ``t_evaluation``: the wall time of ``trainer.train()`` with the callback's
default ``metrics_on="samples"`` and with ``"evaluation"``. Both runs are the same otherwise:
the same weights and batches, ``--evaluations`` evaluations (one after every training step),
and the fixed samples' pictures pass at each. So their difference is what the whole-set
measure adds. ``eval_runtime`` is the Trainer's own time for one evaluation loop (its median,
from ``log_history``). Variants alternate ``--repeats`` times, and the medians are taken.

Models, random init, CPU, Grad-CAM and Grad-CAM++ (the defaults) at the model's default layer:
the demo's tiny ResNet (``examples/hf_trainer.py``, 128 images of 64 px, eval batch 64), and a
transformers ResNet-50 (``ResNetConfig()``, 224 px, ``--images`` images, eval batch 16).

    python benchmarks/hf_evaluation_metrics.py [--repeats 2] [--evaluations 3] [--images 32]
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

import torch
import transformers
from torch.utils.data import Dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examples.hf_trainer import Scenes, tiny_resnet  # noqa: E402
from lightning_gradcam import GradCAMTrainerCallback  # noqa: E402


class Noise(Dataset):
    """Random images with a label and a box (the measure needs one per item)."""

    def __init__(self, n: int, size: int, classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.box = torch.tensor([size / 4, size / 4, 3 * size / 4, 3 * size / 4])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[i], "labels": self.labels[i], "boxes": self.box}


def resnet50() -> transformers.PreTrainedModel:
    config = transformers.ResNetConfig(num_labels=10)  # ResNet-50's stages and widths
    return transformers.AutoModelForImageClassification.from_config(config)


def one_run(make_model, train, evaluated, eval_batch, metrics_on, evaluations, out):
    """The wall time of ``trainer.train()`` and the median ``eval_runtime``."""
    transformers.set_seed(0)
    callback = GradCAMTrainerCallback(num_samples=8, metrics_on=metrics_on)
    args = transformers.TrainingArguments(
        output_dir=out,
        use_cpu=True,
        report_to=[],
        max_steps=evaluations,
        per_device_train_batch_size=len(train),
        per_device_eval_batch_size=eval_batch,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=make_model(),
        args=args,
        train_dataset=train,
        eval_dataset=evaluated,
        callbacks=[callback],
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # quiet
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    runtimes = [e["eval_runtime"] for e in trainer.state.log_history if "eval_runtime" in e]
    return total, statistics.median(runtimes), len(runtimes), callback.whole_set.images


def bench(name, make_model, train, evaluated, eval_batch, repeats, evaluations) -> None:
    times: dict[str, list[float]] = {"samples": [], "evaluation": []}
    loops: list[float] = []
    images = 0
    with tempfile.TemporaryDirectory() as out:
        one_run(make_model, train, evaluated, eval_batch, "samples", 1, out)  # warm-up
        for _ in range(repeats):
            for mode in times:
                total, loop, count, measured = one_run(
                    make_model, train, evaluated, eval_batch, mode, evaluations, out
                )
                assert count == evaluations
                times[mode].append(total)
                loops.append(loop)
                images = max(images, measured)
    t_samples, t_whole = (statistics.median(times[m]) for m in ("samples", "evaluation"))
    loop = statistics.median(loops)
    extra = (t_whole - t_samples) / evaluations
    print(
        f"{name:18s} {images:4d} images  evaluation loop {loop * 1000:8.1f} ms  "
        f"whole-set measure +{extra * 1000:8.1f} ms  ratio {extra / loop:5.2f}x  "
        f"(runs: samples {t_samples:.2f} s, evaluation {t_whole:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--evaluations", type=int, default=3)
    parser.add_argument("--images", type=int, default=32, help="ResNet-50's evaluation set")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("lightning_gradcam").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench(
        "demo tiny ResNet",
        tiny_resnet,
        Scenes(32, 64, 1, shortcut=False),
        Scenes(128, 64, 2),
        64,
        args.repeats,
        args.evaluations,
    )
    bench(
        "ResNet-50",
        resnet50,
        Noise(4, 224, 10, seed=1),
        Noise(args.images, 224, 10, seed=2),
        16,
        args.repeats,
        args.evaluations,
    )


if __name__ == "__main__":
    main()
