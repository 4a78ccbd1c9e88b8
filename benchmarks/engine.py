"""Side-by-side timing of the CAM engine against a plain forward (and pytorch-grad-cam).

ResNet-50 at ``layer4`` and ViT-S/16 (timm ``vit_small_patch16_224``) at ``blocks.11.norm1``
(tokens, read by the engine's layout; pytorch-grad-cam gets its ``reshape_transform``), random
weights, batch 8, 224x224, on the CPU. Each timed variant runs
``--repeats`` times, interleaved round-robin so that machine noise hits all of them alike;
the median is reported, and ratios are taken to the median ``no_grad`` forward.

Targets (issues 2 and 10, for each model): Grad-CAM <= 1.10x the forward; all five
gradient methods together <= 1.15x; Grad-CAM >= 2.5x faster than pytorch-grad-cam's
``GradCAM`` (if installed: ``pip install -e .[bench]``; timm for the ViT).

    python benchmarks/engine.py [--repeats 7] [--batch 8] [--threads N] [--models resnet50 vit_s16]
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


def pytorch_grad_cam_runner(
    model: torch.nn.Module,
    images: torch.Tensor,
    layer: torch.nn.Module,
    reshape_transform: Callable | None = None,
) -> Callable | None:
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        return None
    cam = GradCAM(model=model, target_layers=[layer], reshape_transform=reshape_transform)
    return lambda: cam(input_tensor=images, targets=None)


def vit_tokens_to_maps(tokens: torch.Tensor, h: int = 14, w: int = 14) -> torch.Tensor:
    """pytorch-grad-cam's ViT ``reshape_transform``: drop the class token, tokens to a grid."""
    return tokens[:, 1:].reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)


def build(name: str) -> tuple[torch.nn.Module, str, Callable | None]:
    """``(model, layer name, pytorch-grad-cam reshape_transform)``."""
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None).eval(), "layer4", None
    import timm

    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    return model, "blocks.11.norm1", vit_tokens_to_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--models", nargs="+", choices=("resnet50", "vit_s16"), default=["resnet50", "vit_s16"]
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models:
        bench(name, args)


def bench(model_name: str, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model, layer, reshape_transform = build(model_name)
    images = torch.rand(args.batch, 3, 224, 224)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    gradcam = CAMEngine(model, layer=layer, methods=("gradcam",))
    all_five = CAMEngine(model, layer=layer, methods=FIVE)
    runners: dict[str, Callable] = {
        "no_grad forward": forward,
        "CAMEngine gradcam": lambda: gradcam.explain(images),
        "CAMEngine 5 methods": lambda: all_five.explain(images),
    }
    module = dict(model.named_modules())[layer]
    theirs = pytorch_grad_cam_runner(model, images, module, reshape_transform)
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
        f"{model_name}, batch {args.batch}, 224x224, {layer}, {torch.get_num_threads()} threads, "
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
