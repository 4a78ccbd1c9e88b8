"""Time lightning_gradcam.DetectionCAM on torchvision detectors (not a test).

Side by side in one run, alternating, median of ``--repeats``: one forward+backward of the
model (eval forward recording autograd, then the gradient of its first 16 detection scores
at every parameter, by ``torch.autograd.grad``), and DetectionCAM explaining 1 and 16
detections at the default layer (``roi_heads.box_roi_pool`` for Faster R-CNN, the head's
``head.classification_head.conv`` for RetinaNet and FCOS) and at an image-level layer (with
``hirescam``). Target: 16 detections cost at most 1.5x one forward+backward. Random weights,
score threshold 0. ``retinanet`` / ``fcos``: the tests' one-stage models (ResNet-18 FPN,
P3-P7), 21 classes, image-level layer ``backbone.body.layer3``.

    python benchmarks/tv_detection.py                          # mobilenet_v3 FPN, CPU
    python benchmarks/tv_detection.py --arch retinanet         # or fcos
    python benchmarks/tv_detection.py --arch resnet50 --size 512 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models import detection as tvd
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from lightning_gradcam.detection import DetectionCAM


def _one_stage(kind):
    def build(weights=None, weights_backbone=None, box_score_thresh=0.0, **kwargs):
        backbone = resnet_fpn_backbone(
            backbone_name="resnet18",
            weights=None,
            trainable_layers=5,
            returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256),
        )
        return kind(backbone, score_thresh=box_score_thresh, detections_per_img=100, **kwargs)

    return build


ARCHS = {
    "mobilenet": (tvd.fasterrcnn_mobilenet_v3_large_fpn, "backbone.body.16"),
    "resnet50": (tvd.fasterrcnn_resnet50_fpn, "backbone.body.layer3"),
    "retinanet": (_one_stage(tvd.RetinaNet), "backbone.body.layer3"),
    "fcos": (_one_stage(tvd.FCOS), "backbone.body.layer3"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="mobilenet")
    parser.add_argument("--size", type=int, default=320, help="min_size = max_size of the model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    build, image_layer = ARCHS[args.arch]
    torch.manual_seed(0)
    model = build(
        weights=None,
        weights_backbone=None,
        num_classes=21,
        min_size=args.size,
        max_size=args.size,
        box_score_thresh=0.0,
    )
    model = model.eval().to(device)
    images = [torch.rand(3, args.size * 3 // 4, args.size, device=device)]
    params = [p for p in model.parameters() if p.requires_grad]

    def forward_backward() -> None:
        with torch.enable_grad():
            out = model(images)
            torch.autograd.grad(out[0]["scores"][:16].sum(), params, allow_unused=True)

    roi = DetectionCAM(model)
    image = DetectionCAM(model, layer=image_layer, methods=("hirescam",))
    runs = {
        "forward+backward": forward_backward,
        "default layer, 1 detection": lambda: roi.explain(images, max_detections=1),
        "default layer, 16 detections": lambda: roi.explain(images, max_detections=16),
        f"image-level layer ({image_layer}), 1 detection": lambda: image.explain(
            images, max_detections=1
        ),
        f"image-level layer ({image_layer}), 16 detections": lambda: image.explain(
            images, max_detections=16
        ),
    }
    assert len(roi.explain(images, max_detections=16)[0]) == 16
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in range(args.repeats):
        for name, run in runs.items():  # alternating: the same machine state for each
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["forward+backward"])
    print(
        f"{args.arch}, image {tuple(images[0].shape[-2:])}, model size "
        f"{args.size}, {args.device}, {args.threads} thread(s), median of {args.repeats}"
    )
    print("| run | seconds | x forward+backward |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
