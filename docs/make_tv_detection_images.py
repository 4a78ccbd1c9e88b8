"""Regenerate the picture of docs/torchvision-detection.md from a torchvision detector that has
learned the shapes briefly (about 2 minutes on one CPU core, 139 s on a shared one; run it by
hand, not in tests).

    python docs/make_tv_detection_images.py      # writes docs/images/tv_detection.png

A ``fasterrcnn_mobilenet_v3_large_fpn`` (random init, no downloads) is trained on generated
circles, squares and triangles (``lightning_gradcam.detection.shapes``), then
``DetectionCAM`` explains, on two validation images, the detection that finds each object
(same class, IoU >= 0.5, highest score): Grad-CAM++ at the per-ROI layer
(``roi_heads.box_roi_pool``) and HiResCAM at an image-level layer (``backbone.body.13``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "images"

from lightning_gradcam.core.render import to_uint8_image  # noqa: E402
from lightning_gradcam.detection import DetectionCAM  # noqa: E402
from lightning_gradcam.detection.shapes import (  # noqa: E402
    DETECTION_CLASS_NAMES,
    shapes_detection_batch,
)
from lightning_gradcam.pictures import detection_sheet, sheet  # noqa: E402
from lightning_gradcam.tasks.detection import match_objects  # noqa: E402

SIZE = 96
LAYERS = {"roi_heads.box_roi_pool": "gradcam++", "backbone.body.13": "hirescam"}


def train(steps: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=len(DETECTION_CLASS_NAMES),
        min_size=SIZE,
        max_size=SIZE,
        box_score_thresh=0.0,
    )
    images, targets = shapes_detection_batch(
        64, SIZE, seed=seed, num_objects=2, size_range=(30, 52)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    model.train()
    start = time.time()
    for step in range(steps):
        index = (step * 4) % len(images)
        losses = model(images[index : index + 4], targets[index : index + 4])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == steps - 1:
            print(f"step {step}: loss {float(loss.detach()):.3f} ({time.time() - start:.0f} s)")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT / "tv_detection.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = train(args.steps)
    images, targets = shapes_detection_batch(8, SIZE, seed=99, num_objects=2, size_range=(26, 40))
    with torch.no_grad():
        outputs = model(images)
    found = [
        match_objects(t["boxes"], t["labels"], o["boxes"], o["labels"], o["scores"])
        for t, o in zip(targets, outputs)
    ]
    total = sum(len(f) for f in found)
    hits = sum(r is not None for f in found for r in f)
    print(f"validation: {hits} of {total} objects found (same class, IoU >= 0.5)")
    # The two images with the most objects found.
    best = sorted(range(len(images)), key=lambda i: -sum(r is not None for r in found[i]))[:2]
    chosen = [[r for r in found[i] if r is not None] for i in best]
    picked = [images[i] for i in best]
    maps = {}
    for layer, method in LAYERS.items():
        cam = DetectionCAM(model, layer=layer, methods=(method,))
        maps[layer] = cam.explain(picked, choose=lambda _outputs: chosen)
    rows = []
    for index, image in enumerate(picked):
        picture = cv2.resize(to_uint8_image(image), (2 * SIZE, 2 * SIZE))
        dets = maps["roi_heads.box_roi_pool"][index]
        if not dets:
            continue
        labels = [f"{DETECTION_CLASS_NAMES[d.class_id]} {d.score:.2f}" for d in dets]
        cells, texts = [], []
        for k in range(len(dets)):
            row_maps, row_texts = [], []
            for layer, method in LAYERS.items():
                other = maps[layer][index][k]
                cam = torch.nn.functional.interpolate(
                    other.maps[method][None, None], size=(2 * SIZE, 2 * SIZE), mode="bilinear"
                )[0, 0]
                row_maps.append(cam)
                where = "per-ROI" if layer.startswith("roi_heads") else "image-level"
                text = f"{method} {where}"
                row_texts.append(text if other.evidence[method] else f"{text}: no evidence")
            cells.append(row_maps)
            texts.append(row_texts)
        rows.append(
            detection_sheet(
                picture,
                [(d.box * 2, label) for d, label in zip(dets, labels)],
                cells,
                texts,
                ncols=2 * len(dets),
            )
        )
    width = max(r.shape[1] for r in rows)
    rows = [cv2.copyMakeBorder(r, 0, 0, 0, width - r.shape[1], cv2.BORDER_CONSTANT) for r in rows]
    picture = sheet(rows, ncols=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), picture[:, :, ::-1])
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})")


if __name__ == "__main__":
    main()
