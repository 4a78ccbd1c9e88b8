"""Regenerate the detectron2 pictures of the README (tiny random detectors, CPU, seconds).

python docs/make_detectron2_images.py
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.modeling import build_model

from detectron2_hooks import Detectron2CAM
from detectron2_hooks.tiny import tiny_config
from lightning_gradcam.core.render import caption, draw_boxes, grid, overlay, resize_max

OUT = Path(__file__).resolve().parent / "images"


def _scene(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(60, 140, 256)[None, None, :].expand(3, 192, 256)
    image = (
        ramp
        + torch.rand(3, 24, 32, generator=generator).repeat_interleave(8, 1).repeat_interleave(8, 2)
        * 20
    )
    for (y, x, h, w), colour in zip(
        [(20, 20, 60, 50), (100, 140, 70, 90), (40, 170, 40, 60)],
        [(230, 60, 60), (60, 200, 90), (70, 90, 230)],
    ):
        image[:, y : y + h, x : x + w] = torch.tensor(colour, dtype=torch.float32)[:, None, None]
    return image  # BGR order does not matter for a random model


def _zeroed(kind: str) -> torch.nn.Module:
    torch.manual_seed(2)
    model = build_model(tiny_config(kind, proposals=32)).eval()
    layer = model.head.bbox_pred if kind == "retinanet" else model.roi_heads.box_predictor.bbox_pred
    with torch.no_grad():  # zero regression: every box is its proposal / anchor
        layer.weight.zero_()
        layer.bias.zero_()
    return model


def _tile(rgb: np.ndarray, det, layer: str, method: str) -> np.ndarray:
    picture = overlay(rgb, det.maps_by_layer[layer][method].numpy(), alpha=0.5)
    picture = draw_boxes(picture, det.box[None], color=(255, 255, 255))
    return caption(picture, f"{layer} {method}", height=16)


def _save(path: Path, picture: np.ndarray) -> None:
    picture = resize_max(picture, 640)
    cv2.imwrite(str(path), picture[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main() -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    OUT.mkdir(parents=True, exist_ok=True)
    image = _scene()
    rgb = np.ascontiguousarray(image.permute(1, 2, 0).clamp(0, 255).byte().numpy())

    model = _zeroed("c4")
    layers = ["roi_heads.res5", "backbone.res4"]
    dets = Detectron2CAM(model, layers, methods=("gradcam", "hirescam")).explain(
        [{"image": image}], max_detections=3
    )[0]
    tiles = []
    for det in dets:
        tiles += [
            _tile(rgb, det, "roi_heads.res5", "gradcam"),
            _tile(rgb, det, "backbone.res4", "gradcam"),
            _tile(rgb, det, "backbone.res4", "hirescam"),
        ]
    _save(OUT / "detectron2_c4_per_detection.png", grid(tiles, ncols=3))

    model = _zeroed("retinanet")
    dets = Detectron2CAM(model, "head.cls_subnet.7", methods=("gradcam", "hirescam")).explain(
        [{"image": image}], max_detections=3
    )[0]
    tiles = []
    for det in dets:
        tiles += [_tile(rgb, det, "head.cls_subnet.7", m) for m in ("gradcam", "hirescam")]
    _save(OUT / "detectron2_retinanet_per_detection.png", grid(tiles, ncols=2))


if __name__ == "__main__":
    main()
