"""Cost of explaining 16 YOLO detections against one forward+backward of the same model.

Run: ``YOLO_OFFLINE=1 python benchmarks/yolo.py`` (random-init yolov8n, one 320x320 image,
CPU). Issue 30 asks for at most 1.5x.
"""

import os
import time

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402

from lightning_gradcam import DetectionCAM  # noqa: E402


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    network = yolo.model.eval()
    image = torch.rand(3, 320, 320)
    cam = DetectionCAM(yolo, conf=0.0, methods=("gradcam", "gradcam++"))

    def forward_backward():
        x = image[None].clone().requires_grad_()  # a full backward, down to the input
        decoded, _ = network(x)
        wrt = [x, *(p for p in network.parameters() if p.requires_grad)]
        grads = torch.autograd.grad(decoded[:, 4:].sum(), wrt)
        del grads

    def explain():
        assert len(cam.explain([image], max_detections=16)[0]) == 16

    base, cost = best_of(forward_backward), best_of(explain)
    print(
        f"forward+backward {base * 1e3:.1f} ms; 16 detections {cost * 1e3:.1f} ms; "
        f"ratio {cost / base:.2f}x (target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
