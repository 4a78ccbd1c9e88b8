"""Regenerate the hook pictures of the README and docs/detectron2.md from a detector that has
learned the shapes (about 10 minutes on 2 shared CPU cores; run it by hand, not in tests).

    python docs/make_hook_images.py                # writes docs/images/hook_example.png
                                                   # and docs/images/hook_filmstrip.png

It runs the example (``examples/detectron2_shapes.py``: a tiny Faster R-CNN C4 trained on
generated circles, squares and triangles, with ``GradCAMHook`` from ``cfg.GRADCAM``) for more
iterations than the example's default, prints the detector's COCO AP on ``shapes_val`` (the
``EvalHook`` of ``DefaultTrainer`` runs after the last iteration), and saves the last pass's
pictures and the film strips of two validation images (one row per tracked detection,
iterations as columns).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "images"


def _example():
    spec = importlib.util.spec_from_file_location(
        "detectron2_shapes", ROOT / "examples" / "detectron2_shapes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(path: Path, picture: np.ndarray, max_size: int) -> None:
    from lightning_gradcam.core.render import resize_max

    picture = resize_max(picture, max_size)
    cv2.imwrite(str(path), picture[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {path} ({picture.shape[1]}x{picture.shape[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--period", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from detectron2.data import DatasetCatalog

    from detectron2_hooks.shapes import register_shapes
    from lightning_gradcam.core.render import grid

    example = _example()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    work = tempfile.mkdtemp(prefix="hook_images_")
    for name in ("shapes_train", "shapes_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
    register_shapes("shapes_train", os.path.join(work, "train"), args.train_images, 128, 1)
    register_shapes("shapes_val", os.path.join(work, "val"), 8, 128, 2)
    options = argparse.Namespace(
        kind="c4",
        size=128,
        iters=args.iters,
        period=args.period,
        out=work,
        all_subnet_layers=False,
    )
    cfg = example.build_config(options)
    cfg.defrost()
    cfg.SOLVER.BASE_LR = 0.02
    cfg.GRADCAM.NUM_IMAGES = 4
    cfg.GRADCAM.MAX_DETECTIONS = 3
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = example.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.time()
    trainer.train()
    print(f"trained {args.iters} iterations in {time.time() - start:.0f} s")
    latest = trainer.storage.latest()
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75"):
        if key in latest:
            print(f"shapes_val {key}: {latest[key][0]:.1f}")
    hook = trainer.gradcam_hook
    for record in hook.history:
        scores = {k: round(v, 3) for k, v in record["scalars"].items() if "image_00" in k}
        print(f"  iter {record['iter']}: {scores}")

    OUT.mkdir(parents=True, exist_ok=True)
    methods = list(hook.methods)
    _save(
        OUT / "hook_example.png",
        example.summary_picture(hook.latest_images, methods, len(hook.inputs)),
        720,
    )
    strips = [hook.latest_images[f"gradcam/image_{i:02d}/gradcam/filmstrip"] for i in (0, 1)]
    _save(OUT / "hook_filmstrip.png", grid(strips, ncols=1, pad=6), 1100)


if __name__ == "__main__":
    main()
