"""Side-by-side timing of the CAM engine against a plain forward (and pytorch-grad-cam).

ResNet-50 (random weights), batch 8, 224x224, layer4, on the CPU. Each timed variant runs
``--repeats`` times, interleaved round-robin so that machine noise hits all of them alike;
the median is reported, and ratios are taken to the median ``no_grad`` forward.

Targets (issue 2): Grad-CAM <= 1.10x the forward; all five gradient methods together
<= 1.15x; Grad-CAM >= 2.5x faster than pytorch-grad-cam's ``GradCAM`` (if installed:
``pip install -e .[bench]``).

    python benchmarks/engine.py [--repeats 7] [--batch 8] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from lightning_gradcam import CAMEngine

FIVE = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def pytorch_grad_cam_runner(model: torch.nn.Module, images: torch.Tensor) -> Callable | None:
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        return None
    cam = GradCAM(model=model, target_layers=[model.layer4])
    return lambda: cam(input_tensor=images, targets=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    images = torch.rand(args.batch, 3, 224, 224)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    gradcam = CAMEngine(model, layer="layer4", methods=("gradcam",))
    all_five = CAMEngine(model, layer="layer4", methods=FIVE)
    runners: dict[str, Callable] = {
        "no_grad forward": forward,
        "CAMEngine gradcam": lambda: gradcam.explain(images),
        "CAMEngine 5 methods": lambda: all_five.explain(images),
    }
    theirs = pytorch_grad_cam_runner(model, images)
    if theirs is not None:
        runners["pytorch-grad-cam GradCAM"] = theirs

    for run in runners.values():  # warm-up: allocator, oneDNN kernels
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["no_grad forward"]
    print(
        f"ResNet-50, batch {args.batch}, 224x224, layer4, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    for name, seconds in median.items():
        print(f"  {name:<26} {seconds * 1000:8.1f} ms   {seconds / base:5.2f}x forward")
    checks = [
        ("Grad-CAM / forward", median["CAMEngine gradcam"] / base, "<=", 1.10),
        ("5 methods / forward", median["CAMEngine 5 methods"] / base, "<=", 1.15),
    ]
    if theirs is not None:
        speedup = median["pytorch-grad-cam GradCAM"] / median["CAMEngine gradcam"]
        checks.append(("speed-up over pytorch-grad-cam", speedup, ">=", 2.5))
    else:
        print("  (pytorch-grad-cam not installed: pip install -e .[bench] to compare)")
    for label, value, op, target in checks:
        ok = value <= target if op == "<=" else value >= target
        print(f"  {label:<32} {value:5.2f}  (target {op} {target})  {'OK' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
