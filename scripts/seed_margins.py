"""Measure the trained-behaviour tests over several seeds (and thread counts), so that their
floors come from the worst seed, not from the one seed the test trains.

    PYTHONPATH=$PWD python scripts/seed_margins.py --seeds 0 1 2 3 4 --threads 1 [--only vit]

For each seed it trains the test's model exactly as the test does (same steps, batch, size) and
prints the numbers the test thresholds, plus a random-init baseline (the floor must sit above it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_gradcam import CAMEngine  # noqa: E402
from lightning_gradcam.synthetic import make_shapes  # noqa: E402
from tests.engine import test_localisation as loc  # noqa: E402
from tests.engine import test_localisation_vit as vit  # noqa: E402
from tests.engine.nets import train_on_shapes  # noqa: E402


def peaks_inside(maps: torch.Tensor, boxes: torch.Tensor) -> float:
    size = maps.shape[-1]
    peak = maps.flatten(1).argmax(dim=1)
    y, x = peak // size, peak % size
    inside = (x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])
    return inside.float().mean().item()


def accuracy(model, held_out) -> float:
    with torch.no_grad():
        return (model(held_out.images).argmax(1) == held_out.labels).float().mean().item()


def measure_vit(seed: int, train: bool = True) -> dict[str, float]:
    held_out = make_shapes(100, size=vit.SIZE, seed=2)
    torch.manual_seed(seed)
    model = vit.TinyViT()
    if train:
        model = train_on_shapes(model, vit.STEPS, vit.BATCH, size=vit.SIZE)
    model.eval()
    out = {"acc": accuracy(model, held_out)}
    res = CAMEngine(model, methods=("gradcam", "gradcam++")).explain(
        held_out.images, held_out.labels
    )
    for m in ("gradcam", "gradcam++"):
        e, i, area = vit._box_scores(res.maps[m][:, 0], held_out.boxes)
        out[f"{m}:energy/area"], out[f"{m}:inside"] = e / area, i
    res = CAMEngine(model, layer="blocks.0.norm1", methods=("layercam", "hirescam")).explain(
        held_out.images, held_out.labels
    )
    for m in ("layercam", "hirescam"):
        e, i, area = vit._box_scores(res.maps[m][:, 0], held_out.boxes)
        out[f"norm1 {m}:energy"], out[f"norm1 {m}:inside"] = e, i
    out["area"] = area
    return out


def measure_cnn(seed: int, train: bool = True) -> dict[str, float]:
    held_out = make_shapes(100, size=64, seed=2)
    torch.manual_seed(seed)
    model = loc.ShapesNet()
    if train:
        model = train_on_shapes(model, loc.STEPS, loc.BATCH, size=64)
    model.eval()
    out = {"acc": accuracy(model, held_out)}
    res = CAMEngine(model, layer="features", methods=("gradcam", "gradcam++")).explain(
        held_out.images, held_out.labels
    )
    for m in ("gradcam", "gradcam++"):
        out[f"{m}:inside"] = peaks_inside(res.maps[m][:, 0], held_out.boxes)
    out["gradcam rolled:inside"] = peaks_inside(
        res.maps["gradcam"][:, 0].roll(1, dims=0), held_out.boxes
    )
    return out


MEASURES = {"vit": measure_vit, "cnn": measure_cnn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--only", choices=sorted(MEASURES), nargs="*")
    args = parser.parse_args()
    for name in args.only or sorted(MEASURES):
        measure = MEASURES[name]
        torch.set_num_threads(1)
        print(f"{name} random-init", {k: round(v, 3) for k, v in measure(0, False).items()})
        for threads in args.threads:
            torch.set_num_threads(threads)
            for seed in args.seeds:
                row = {k: round(v, 3) for k, v in measure(seed).items()}
                print(f"{name} seed={seed} threads={threads}", row, flush=True)


if __name__ == "__main__":
    main()
