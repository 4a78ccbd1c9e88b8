"""Time Detectron2CAM against one plain inference forward (not a test).

For one image: explain 1 and 16 detections at a per-ROI layer and at an image-level layer,
next to a plain ``model(inputs)`` under ``no_grad``, and next to the obvious alternative at the
image-level layer (one backward per detection). Targets: 16 detections at a per-ROI layer at
most 1.2x one inference forward; at an image-level layer at most 3x. The scalar differentiated
is Detectron2CAM's default, each detection's class logit.

``zoo-c4``: the stock model-zoo ``COCO-Detection/faster_rcnn_R_50_C4_1x.yaml`` (ResNet-50, its
1000 proposals), random weights, at a 320-px test size (image 320x426), 1 and 10 detections.

    python benchmarks/detection.py                    # Faster R-CNN C4 and FPN, ResNet-18
    python benchmarks/detection.py --kinds c4 --size 480 --proposals 300 --threads 2
    python benchmarks/detection.py --kinds zoo-c4
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from detectron2.modeling import build_model

from detectron2_hooks import Detectron2CAM
from detectron2_hooks.tiny import tiny_config
from lightning_gradcam.core.capture import ActivationCapture
from lightning_gradcam.core.layers import resolve_layer

LAYERS = {
    "c4": ("roi_heads.res5", "backbone.res4"),
    "fpn": ("roi_heads.box_pooler", "backbone.fpn_output2"),
    "zoo-c4": ("roi_heads.res5", "backbone.res4"),
}
#: Detections explained per row (besides 1).
MANY = {"c4": 16, "fpn": 16, "zoo-c4": 10}
ZOO_SIZE = 320


def _build(kind: str, proposals: int) -> torch.nn.Module:
    if kind == "zoo-c4":
        from detectron2 import model_zoo
        from detectron2.config import get_cfg

        from detectron2_hooks import to_cam_config

        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"))
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.PIXEL_STD = [57.4, 57.1, 58.4]  # realistic; random weights
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg = to_cam_config(cfg)
    else:
        cfg = tiny_config(kind, num_classes=20, proposals=proposals, score_thresh=0.0)
        cfg.defrost()
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # the stock res5 head width for C4
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    return build_model(cfg).eval()


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _loop_baseline(model, inputs, layer: str, count: int) -> None:
    """One forward, then one backward per detection: the structure Detectron2CAM avoids."""
    with torch.enable_grad(), ActivationCapture({layer: resolve_layer(model, layer)}) as cap:
        instances = model.inference(inputs, do_postprocess=False)
        scores = instances[0].cam_logit[:count]  # the class logit, as Detectron2CAM
        for index in range(len(scores)):
            torch.autograd.grad(scores[index], cap.activations[layer][0], retain_graph=True)


def run(kind: str, size: int, proposals: int, repeats: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    model = _build(kind, proposals)
    size = ZOO_SIZE if kind == "zoo-c4" else size
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, size, int(size * 4 / 3), generator=generator) * 255
    inputs = [{"image": image}]

    def forward():
        with torch.no_grad():
            model(inputs)

    rows = [("inference forward (no_grad)", _median_time(forward, repeats))]
    for layer in LAYERS[kind]:
        cam = Detectron2CAM(model, layer, methods=("gradcam", "gradcam++", "hirescam"))
        for count in (1, MANY[kind]):
            found = cam.explain(inputs, max_detections=count)
            assert len(found[0]) == count, f"only {len(found[0])} detections"
            seconds = _median_time(
                lambda c=cam, n=count: c.explain(inputs, max_detections=n), repeats
            )
            rows.append((f"Detectron2CAM {layer}, {count} detection(s)", seconds))
    image_layer = LAYERS[kind][1]
    seconds = _median_time(
        lambda: _loop_baseline(model, inputs, image_layer, MANY[kind]), max(1, repeats // 2)
    )
    rows.append((f"loop of {MANY[kind]} backwards at {image_layer}", seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["c4", "fpn"], choices=sorted(LAYERS))
    parser.add_argument("--size", type=int, default=384, help="image height (width = 4/3 of it)")
    parser.add_argument("--proposals", type=int, default=300, help="RPN proposals kept")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} CPU thread(s); tiny kinds: ResNet-18, image "
        f"{args.size}x{int(args.size * 4 / 3)}, {args.proposals} proposals; zoo-c4: ResNet-50, "
        f"image {ZOO_SIZE}x{int(ZOO_SIZE * 4 / 3)}, the config's proposals; methods gradcam, "
        f"gradcam++, hirescam; the class logit; median of {args.repeats}\n"
    )
    for kind in args.kinds:
        rows = run(kind, args.size, args.proposals, args.repeats)
        base = rows[0][1]
        name = "R50 C4 model zoo, 320 px" if kind == "zoo-c4" else f"Faster R-CNN {kind.upper()}"
        print(f"| {name} | seconds | x forward |\n|---|---:|---:|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.3f} | {seconds / base:.2f} |")
        print()


if __name__ == "__main__":
    main()
