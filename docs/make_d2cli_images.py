"""Regenerate the ``detectron2-gradcam`` pictures of the README (docs/images/d2cli_*.png).

Writes the stock configs of two tiny ResNet-18 detectors (Faster R-CNN C4 and RetinaNet,
``detectron2_hooks.tiny``) and random-weight checkpoints, then runs the command exactly as a
user would on a generated scene, and keeps a few of its pictures (CPU, under a minute)::

    python docs/make_d2cli_images.py [--work /tmp/d2cli-docs]

The weights are random, so the detections and maps show the command's output, not a trained
detector's judgement.
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from pathlib import Path

import cv2
import torch
from detectron2.modeling import build_model

import detectron2_hooks  # noqa: F401  (registers the adapters)
from detectron2_hooks import cli
from detectron2_hooks.tiny import tiny_config
from lightning_gradcam.core.render import resize_max
from lightning_gradcam.io import sample_image, write_images

OUT = Path(__file__).resolve().parent / "images"


def write_detector(kind: str, work: Path) -> tuple[Path, Path]:
    """A stock (non-CAM) tiny config and a random-weight checkpoint: ``(yaml, checkpoint)``."""
    cfg = tiny_config(kind, cam=False, min_size=224, max_size=320)
    torch.manual_seed(0)
    model = build_model(cfg)
    yaml_path, weights = work / f"{kind}.yaml", work / f"{kind}.pth"
    yaml_path.write_text(cfg.dump())
    torch.save({"model": model.state_dict()}, weights)
    return yaml_path, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/d2cli-docs"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    scene = work / "inputs" / "scene.png"
    write_images({scene: sample_image(224, seed=7)})

    outputs = {}
    for kind, layers in (("c4", []), ("retinanet", ["--layer-name", "head.cls_subnet.*"])):
        yaml_path, weights = write_detector(kind, work)
        out = work / f"out_{kind}"
        shutil.rmtree(out, ignore_errors=True)
        argv = ["--config-file", str(yaml_path), "--input", str(scene), "--output-dir", str(out)]
        argv += ["--max-detections", "3", *layers, "--opts", "MODEL.WEIGHTS", str(weights)]
        print("detectron2-gradcam", " ".join(argv))
        status = cli.main(argv)
        if status:
            raise SystemExit(status)
        outputs[kind] = out

    c4, retinanet = outputs["c4"], outputs["retinanet"]
    keep = {
        "d2cli_c4_detections.png": sorted(c4.glob("scene-detections.png")),
        "d2cli_c4_det00_gradcam.png": sorted(c4.glob("scene-det00-*-gradcam.png")),
        "d2cli_c4_det00_gradcam++.png": sorted(c4.glob("scene-det00-*-gradcam++.png")),
        "d2cli_retinanet_det00_strip.png": sorted(retinanet.glob("scene-det00-*-strip.png")),
    }
    for name, found in keep.items():
        if not found:
            raise SystemExit(f"no picture for {name}")
        image = cv2.cvtColor(cv2.imread(str(found[0])), cv2.COLOR_BGR2RGB)
        write_images({OUT / name: resize_max(image, 800)})
        print(f"{found[0].name} -> docs/images/{name}")


if __name__ == "__main__":
    main()
