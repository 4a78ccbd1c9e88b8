"""Watch a detectron2 detector learn where to look: GradCAMHook on generated shape scenes.

    python examples/detectron2_shapes.py                    # Faster R-CNN (C4), ~3 min on 2 CPU cores
    python examples/detectron2_shapes.py --kind retinanet --all-subnet-layers
    tensorboard --logdir runs/detectron2_shapes

Circles, squares and triangles on a cluttered background are registered as two detectron2
datasets (``shapes_train``, ``shapes_val``; PNG files under ``<out>/data``). A tiny ResNet-18
detector, randomly initialised, trains on the CPU with a ``DefaultTrainer`` built from config;
``GradCAMTrainerMixin`` adds the hook from ``cfg.GRADCAM.*``. Every ``--period`` iterations
and at the end, the hook explains the top detections of 4 validation images (each one's class
logit) and logs, next to detectron2's losses: the detections, one Grad-CAM / Grad-CAM++ overlay
per detection, a film strip per tracked detection across the passes, and the drift and in-box
energy of the maps. Early on, when nothing clears the score threshold, the hook logs the input
captioned "no detections". The default run is short; ``python docs/make_hook_images.py`` trains
longer, until the detector finds the shapes.
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np
import torch
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

import detectron2_hooks  # noqa: F401  (registers the CAM adapters)
from detectron2_hooks.shapes import register_shapes
from detectron2_hooks.tiny import tiny_config
from detectron2_hooks.trainer import GradCAMTrainerMixin
from lightning_gradcam.core.render import grid, resize_max


class Trainer(GradCAMTrainerMixin, DefaultTrainer):
    """A ``DefaultTrainer`` with ``GradCAMHook.from_config(cfg)`` before its writers."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        # use_fast_impl needs detectron2's compiled extension; the pure-Python one is enough.
        return COCOEvaluator(dataset_name, output_dir=cfg.OUTPUT_DIR, use_fast_impl=False)


def build_config(args: argparse.Namespace):
    cfg = tiny_config(args.kind, num_classes=3, min_size=args.size, max_size=args.size)
    cfg.DATASETS.TRAIN = ("shapes_train",)
    cfg.DATASETS.TEST = ("shapes_val",)
    cfg.TEST.EVAL_PERIOD = 0  # COCO AP on shapes_val once, at the end
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = args.iters
    cfg.SOLVER.WARMUP_ITERS = min(50, args.iters // 4)
    cfg.SOLVER.STEPS = (int(args.iters * 0.8),)
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9  # one checkpoint, at the end
    cfg.OUTPUT_DIR = os.path.join(args.out, args.kind)
    cfg.GRADCAM.PERIOD = args.period
    cfg.GRADCAM.NUM_IMAGES = 4
    cfg.GRADCAM.MAX_DETECTIONS = 3
    cfg.GRADCAM.METHODS = ["gradcam", "gradcam++"]
    if args.kind == "retinanet":
        # Head layers are image-level: the element-wise map is the detection's own.
        cfg.GRADCAM.METHODS = ["gradcam", "gradcam++", "hirescam"]
        if args.all_subnet_layers:
            cfg.GRADCAM.LAYER = "head.cls_subnet.*"
    return cfg


def _side_by_side(pictures: list[np.ndarray], pad: int = 6) -> np.ndarray:
    height = max(p.shape[0] for p in pictures)
    parts = []
    for picture in pictures:
        parts.append(np.pad(picture, ((0, height - picture.shape[0]), (0, pad), (0, 0))))
    return np.concatenate(parts, axis=1)[:, :-pad]


def summary_picture(latest: dict[str, np.ndarray], methods: list[str], images: int) -> np.ndarray:
    """One row per image: the detections, then each method's overlays."""
    rows = []
    for index in range(images):
        base = f"gradcam/image_{index:02d}"
        rows.append(
            _side_by_side([latest[f"{base}/detections"], *(latest[f"{base}/{m}"] for m in methods)])
        )
    return grid(rows, ncols=1, pad=6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("c4", "retinanet"), default="c4")
    parser.add_argument("--iters", type=int, default=120, help="training iterations")
    parser.add_argument("--period", type=int, default=30, help="iterations between CAM passes")
    parser.add_argument("--size", type=int, default=128, help="image side, pixels")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--all-subnet-layers", action="store_true", help="RetinaNet: 8 layers")
    parser.add_argument("--out", default=os.path.join("runs", "detectron2_shapes"))
    parser.add_argument(
        "--picture", default=None, help="also save the last logged pictures here (PNG)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data = os.path.join(args.out, "data")
    register_shapes("shapes_train", os.path.join(data, "train"), args.train_images, args.size, 1)
    register_shapes("shapes_val", os.path.join(data, "val"), 8, args.size, 2)
    cfg = build_config(args)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.time()
    trainer.train()
    hook = trainer.gradcam_hook
    print(f"\ntrained {args.iters} iterations in {time.time() - start:.0f} s")
    for record in hook.history:
        counts = [v for k, v in record["scalars"].items() if k.endswith("num_detections")]
        drift = [v for k, v in record["scalars"].items() if k.endswith("gradcam/drift_vs_prev")]
        line = f"  iter {record['iter']:4d}: detections per image {[int(c) for c in counts]}"
        if drift:
            line += f", Grad-CAM drift vs previous pass {np.mean(drift):.3f}"
        print(line)

    picture = summary_picture(hook.latest_images, list(hook.methods), len(hook.inputs))
    path = args.picture or os.path.join(cfg.OUTPUT_DIR, "hook_example.png")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    small = resize_max(picture, 600)  # README-sized
    cv2.imwrite(path, cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"last pictures: {path}")
    print(f"TensorBoard:   tensorboard --logdir {args.out}   (IMAGES tab: gradcam/image_NN/...)")


if __name__ == "__main__":
    main()
