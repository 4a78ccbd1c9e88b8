"""Cost of the faithfulness metrics against the forwards they need.

ResNet-50 (random weights), 8 images at 224x224, 16 steps, deletion and insertion, two
methods (Grad-CAM, Grad-CAM++) and the random-map reference: 3 maps x 2 metrics x 16 steps
= 96 no-grad forwards of the batch by the issue's count. Timed: ``CAMEngine.faithfulness``
on a precomputed ``CAMResult`` (the CAM pass itself is benchmarks/engine.py's business)
against 96 plain no-grad forwards of the batch, interleaved round-robin, medians.

Target (issue 14): <= 1.10x.

    python benchmarks/faithfulness.py [--repeats 3] [--batch 8] [--size 224] [--threads N]
                                      [--max-batch 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from lightning_gradcam import CAMEngine

STEPS, METRICS, METHODS = 16, ("deletion", "insertion"), ("gradcam", "gradcam++")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=64, help="images per forward (64)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = torchvision.models.resnet50(weights=None).eval().to(device)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    engine = CAMEngine(model, layer="layer4", methods=METHODS)
    result = engine.explain(images)
    forwards = (len(METHODS) + 1) * len(METRICS) * STEPS

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain() -> None:
        with torch.no_grad():
            for _ in range(forwards):
                model(images)

    def ours() -> None:
        engine.faithfulness(images, result, METRICS, steps=STEPS, max_batch=args.max_batch)

    runners = {f"{forwards} no_grad forwards": plain, "CAMEngine.faithfulness": ours}
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.no_grad():  # warm-up: first-call effects out of the timings
        model(images)
    engine.faithfulness(images, result, METRICS, steps=2)
    for _ in range(args.repeats):
        for name, fn in runners.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = medians[f"{forwards} no_grad forwards"]
    print(
        f"resnet50, {args.batch} images {args.size}px, {device.type}, "
        f"{torch.get_num_threads()} threads, max_batch {args.max_batch}, "
        f"{args.repeats} repeats (median)"
    )
    for name, median in medians.items():
        print(f"  {name:26s} {median:8.2f} s  {median / reference:5.2f}x")
    ratio = medians["CAMEngine.faithfulness"] / reference
    print(f"faithfulness / {forwards} forwards = {ratio:.2f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
