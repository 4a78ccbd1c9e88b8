"""Make the README's command-line pictures (docs/images/cli_*.png) without any download.

Trains torchvision's resnet18 with a 3-class head on the synthetic shapes task for a few
hundred steps (a few minutes on two CPU cores), saves its state dict, then runs exactly
the command the README shows on a generated scene and copies its pictures here.

    python docs/make_cli_images.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF

from lightning_gradcam.cli import main
from lightning_gradcam.io import read_image, write_images
from lightning_gradcam.synthetic import SHAPE_NAMES, draw_scene, make_shapes

SIZE = 64
STEPS = 200
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"


def train(path: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # faster than two threads on a busy two-core machine
    model = torchvision.models.resnet18(num_classes=len(SHAPE_NAMES))
    data = make_shapes(3000, size=SIZE, seed=0)
    test = make_shapes(200, size=SIZE, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=STEPS)
    start = time.time()
    model.train()
    for step in range(STEPS):
        index = torch.randint(0, len(data), (32,))
        images = TF.normalize(data.images[index], MEAN, STD)
        loss = torch.nn.functional.cross_entropy(model(images), data.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        predicted = model(TF.normalize(test.images, MEAN, STD)).argmax(1)
    print(f"held-out accuracy {(predicted == test.labels).float().mean():.3f}")
    torch.save(model.state_dict(), path)


def main_images() -> int:
    work = Path(tempfile.mkdtemp())
    weights = work / "shapes_resnet18.pth"
    train(weights)
    scene, _, classes = draw_scene(np.random.default_rng(7), SIZE, SIZE, num_objects=1)
    print("scene holds a", SHAPE_NAMES[classes[0]], f"(class {classes[0]})")
    write_images({work / "scene.png": scene})
    argv = [
        "--image-path", str(work / "scene.png"),
        "--network", "resnet18",
        "--weight-path", str(weights),
        "--layer-name", "layer3",
        "--input-size", str(SIZE),
        "--format", "grid",
        "--output-dir", str(work / "results"),
    ]  # fmt: skip
    print("lightning-gradcam " + " ".join(argv))
    code = main(argv)
    if code:
        return code
    IMAGES.mkdir(exist_ok=True)
    write_images({IMAGES / "cli_input.png": read_image(work / "scene.png")})
    for picture in sorted((work / "results").glob("*.png")):
        kind = picture.stem.split("-resnet18-")[1]
        shutil.copy(picture, IMAGES / f"cli_{kind}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main_images())
