"""Cost of ``GradCAMCallback(metrics_on="validation")``: the extra time of a measured
validation epoch against the validation epoch's own time, side by side in one run.

    ratio = (t_with - t_without) / t_without

``t_without``: the validation epoch as Lightning runs it inside ``fit`` (eval mode,
``no_grad``, one forward per batch); ``t_with``: the same batches, each forward followed by
the callback's whole-set measure of the batch (``tasks.population.ClassificationMeasure``:
Grad-CAM and Grad-CAM++, the callback's default methods, from one forward and one backward;
energy in the box, pointing game, evidence). The two variants alternate round-robin
``--repeats`` times, so machine noise hits both alike; medians are reported. Models, random
init, on the CPU: torchvision ResNet-50 at ``layer4`` (batch 16, 224 px; ``--batches``
batches, few by default: a ResNet-50 epoch on 2 cores is slow) and the demo's CNN of
``examples/lightning_shapes.py`` at ``features.block3`` (batch 32, 64 px).
Target (issue 28): ratio <= 1.25.

    python benchmarks/validation_metrics.py [--repeats 3] [--batches 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examples.lightning_shapes import small_cnn  # noqa: E402
from lightning_gradcam.core.population import MetricSums  # noqa: E402
from lightning_gradcam.tasks.base import TaskOptions  # noqa: E402
from lightning_gradcam.tasks.classification import ClassificationTask  # noqa: E402
from lightning_gradcam.tasks.population import measure_for  # noqa: E402

METHODS = ("gradcam", "gradcam++")


def _batches(count: int, batch: int, size: int, classes: int) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        images = torch.rand(batch, 3, size, size, generator=g)
        labels = torch.randint(0, classes, (batch,), generator=g)
        boxes = torch.tensor([[size * 0.2, size * 0.2, size * 0.7, size * 0.8]]).repeat(batch, 1)
        out.append((images, labels, boxes))
    return out


def _epoch(net, batches, measure=None, sums=None) -> float:
    start = time.perf_counter()
    for batch in batches:
        with torch.no_grad():
            net(batch[0])
        if measure is not None:
            measure.measure(net, batch, sums)
    return time.perf_counter() - start


def bench(name, net, layer, batches, repeats) -> float:
    net.eval()
    task = ClassificationTask(TaskOptions(methods=METHODS, layer=layer))
    measure = measure_for(task)
    sums = MetricSums(METHODS, measure.fields)
    _epoch(net, batches[:1], measure, sums)  # warm-up: first-call effects
    plain, measured = [], []
    for _ in range(repeats):
        plain.append(_epoch(net, batches))
        measured.append(_epoch(net, batches, measure, sums))
    without, with_ = statistics.median(plain), statistics.median(measured)
    ratio = (with_ - without) / without
    images = sum(len(b[0]) for b in batches)
    print(
        f"{name:10s} {len(batches)} batches ({images} images): validation epoch "
        f"{without:.3f} s, with metrics_on='validation' {with_:.3f} s; "
        f"ratio = (with - without) / without = {ratio:.2f}  (target <= 1.25)"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=3, help="ResNet-50 batches per epoch")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    resnet = torchvision.models.resnet50(weights=None)
    bench("resnet50", resnet, "layer4", _batches(args.batches, 16, 224, 1000), args.repeats)
    bench("demo CNN", small_cnn(), "features.block3", _batches(10, 32, 64, 3), args.repeats)


if __name__ == "__main__":
    main()
