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


def measure_faithfulness(seed: int, train: bool = True) -> dict[str, float]:
    """tests/engine/test_faithfulness.py: CAM maps against random and inverted maps (its
    deletion AUC must be lower, its insertion AUC higher); prints the worst margin."""
    from lightning_gradcam.core.faithfulness import evaluate_maps, mean_scalars
    from lightning_gradcam.core.methods import BUILTIN_METHODS, get_method

    held_out = make_shapes(16, size=64, seed=2)
    torch.manual_seed(seed)
    model = loc.ShapesNet()
    if train:
        model = train_on_shapes(model, loc.STEPS, loc.BATCH, size=64)
    model.eval()
    methods = tuple(m for m in BUILTIN_METHODS if not get_method(m).guided)
    engine = CAMEngine(model, layer="features", methods=methods)
    result = engine.explain(held_out.images, held_out.labels)
    inverted = {f"{m}_inverted": 1 - result.maps[m][:, 0] for m in methods}
    res = engine.faithfulness(held_out.images, result, ("deletion", "insertion"), steps=16)
    inv = evaluate_maps(model, held_out.images, inverted, result.class_ids[:, 0], steps=16)
    means = mean_scalars(res) | mean_scalars(inv)
    out = {}
    for m in methods:
        ours, rnd, flip = means[m], means["random"], means[f"{m}_inverted"]
        out[f"{m}:del margin"] = (
            min(rnd["deletion_auc"], flip["deletion_auc"]) - ours["deletion_auc"]
        )
        out[f"{m}:ins margin"] = ours["insertion_auc"] - max(
            rnd["insertion_auc"], flip["insertion_auc"]
        )
    return out


def measure_segmentation(seed: int, train: bool = True) -> dict[str, float]:
    """tests/segmentation/test_callback_segmentation.py's fit, with the seed changed."""
    import tempfile

    import lightning.pytorch as pl

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "lightning"))
    from cam_events import read_events

    from lightning_gradcam import GradCAMCallback
    from lightning_gradcam.core.synthetic import make_segmentation_shapes
    from tests.segmentation import test_callback_segmentation as seg

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        callback = GradCAMCallback(methods=("gradcam", "hirescam"), num_samples=4)
        trainer = pl.Trainer(
            max_epochs=12 if train else 1,
            limit_train_batches=1.0 if train else 0,
            accelerator="cpu",
            devices=1,
            logger=pl.loggers.TensorBoardLogger(tmp, name="tb", version=0),
            callbacks=[callback],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=1,
            log_every_n_steps=1,
        )
        module = seg.SegmentationModule()
        trainer.fit(module, seg._loader(256, 0, True), seg._loader(8, 1, False))
        _, scalars = read_events(tmp)
    val = make_segmentation_shapes(8, 32, seed=1, num_objects=2, num_classes=2)
    with torch.no_grad():
        predicted = module.eval()(val.images).argmax(1)
    found, shapes = predicted > 0, val.masks > 0
    out = {"fg IoU": float((found & shapes).sum() / (found | shapes).sum())}
    for m in ("gradcam", "hirescam"):
        for key in ("energy_in_mask", "pointing_game"):
            series = scalars.get(f"gradcam/net.features/{m}/{key}", [(0, float("nan"))])
            out[f"{m}:{key}"] = series[-1][1]
    return out


def measure_shortcut(seed: int, train: bool = True) -> dict[str, float]:
    """tests/lightning/test_shortcut_example.py: examples/shortcut.py's two runs."""
    import importlib.util
    import tempfile

    path = Path(__file__).resolve().parents[1] / "examples" / "shortcut.py"
    spec = importlib.util.spec_from_file_location("shortcut_example", path)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("clean", "shortcut"):
            run = example.train(
                name, epochs=4 if train else 0, out=tmp, train_images=480, seed=seed
            )
            out[f"{name}:acc"] = run.accuracy[-1] if run.accuracy else float("nan")
            for key in ("pointing_game", "energy_in_box"):
                series = example.series(run, key)
                out[f"{name}:{key}"] = series[-1] if series else float("nan")
            out[f"{name}:alarms"] = float(len(run.alarms))
    return out


MEASURES = {
    "vit": measure_vit,
    "cnn": measure_cnn,
    "faithfulness": measure_faithfulness,
    "segmentation": measure_segmentation,
    "shortcut": measure_shortcut,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--only", choices=sorted(MEASURES), nargs="*")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    for name in args.only or sorted(MEASURES):
        measure = MEASURES[name]
        torch.set_num_threads(1)
        if not args.no_baseline:
            baseline = measure(0, False)
            print(f"{name} random-init", {k: round(v, 3) for k, v in baseline.items()})
        for threads in args.threads:
            torch.set_num_threads(threads)
            for seed in args.seeds:
                row = {k: round(v, 3) for k, v in measure(seed).items()}
                print(f"{name} seed={seed} threads={threads}", row, flush=True)


if __name__ == "__main__":
    main()
