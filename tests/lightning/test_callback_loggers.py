"""Pictures and scalars reach every logger the trainer has: W&B (offline), MLflow (SQLite store),
CSVLogger, TensorBoard and CSV at once; nothing at all under fast_dev_run. Real libraries only."""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings

import lightning.pytorch as lp
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events, steps
from cam_loggers import read_png_rgb, wandb_history, wandb_run_dir
from cam_tiny import LAYER, SIZE, STEPS_PER_EPOCH, TinyL, TinyPL, val_loader

from lightning_gradcam import GradCAMCallback
from lightning_gradcam.lightning.sinks import mlflow_key, sinks_for

pytestmark = pytest.mark.timeout(180)

PREFIX = f"gradcam/{LAYER}"
CAPTION = max(14, min(28, SIZE // 8))  # render.caption's line height for 32-pixel tiles


def _is_tile(picture) -> bool:
    """A 32-pixel sample tile above its caption band (one line or more: captions wrap
    rather than shrink below a legible size)."""
    lines, rest = divmod(picture.shape[0] - SIZE, CAPTION)
    return picture.shape[1:] == (SIZE, 3) and lines >= 1 and rest == 0


STEPS = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
METHODS = ("gradcam", "gradcam++")


def _fit(root, logger, package=pl, **kwargs):
    """Two epochs with validation; returns the callback and our warnings."""
    # 4 images: with 2, both maps may have no positive evidence early on (no drift then)
    cb = GradCAMCallback(layer=LAYER, methods=METHODS, num_samples=4)
    trainer = make_trainer(package, root, [cb], logger=logger, max_epochs=2, **kwargs)
    torch.manual_seed(0)  # the same weights whatever ran before
    module = TinyPL() if package is pl else TinyL()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, val_dataloaders=val_loader())
    ours = [str(w.message) for w in caught if "GradCAMCallback" in str(w.message)]
    mlflow_renamed = [str(w.message) for w in caught if "MLFlow only allows" in str(w.message)]
    return cb, ours + mlflow_renamed


def test_wandb_offline_gets_captioned_images_and_scalars_at_the_trainer_step(tmp_path, monkeypatch):
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="cam")
    try:
        _cb, ours = _fit(tmp_path, logger)
    finally:
        logger.experiment.finish()
    assert ours == []
    assert not (tmp_path / "gradcam").exists()  # no PNG fallback folder

    rows = wandb_history(tmp_path)
    by_step: dict[int, dict] = {}
    for row in rows:
        if any(key.startswith(PREFIX) for key in row):
            assert row["trainer/global_step"] not in by_step  # one row per CAM pass
            by_step[row["trainer/global_step"]] = row
    assert sorted(by_step) == STEPS
    run = wandb_run_dir(tmp_path)
    for step, row in by_step.items():
        for method in METHODS:
            for name in ("sample_00", "sample_01", "grid"):
                key = f"{PREFIX}/{method}/{name}"
                assert row[f"{key}/_type"] == "image-file"
                if name == "grid":
                    assert row[f"{key}/caption"] == f"grid, step {step}"
                else:  # the class explained and its score, as drawn on the tile
                    caption = rf"class \d -?\d+\.\d\d(: no positive evidence)?, step {step}"
                    assert re.fullmatch(caption, row[f"{key}/caption"]), row[f"{key}/caption"]
                picture = read_png_rgb(os.path.join(run, "files", row[f"{key}/path"]))
                if name != "grid":
                    assert _is_tile(picture), picture.shape
            assert 0 <= row[f"{PREFIX}/{method}/energy_in_box"] <= 1
    assert f"{PREFIX}/inputs/_type" in by_step[STEPS[0]]
    assert f"{PREFIX}/inputs/_type" not in by_step[STEPS[1]]
    assert f"{PREFIX}/gradcam++/drift_vs_prev" not in by_step[STEPS[0]]
    assert 0 <= by_step[STEPS[1]][f"{PREFIX}/gradcam++/drift_vs_prev"] <= 1
    # the media files are there, under the method's own folder (gradcam++ kept as is)
    media = os.path.join(run, "files", "media", "images", *PREFIX.split("/"), "gradcam++")
    assert len([f for f in os.listdir(media) if f.startswith("sample_01_")]) == 2


def test_mlflow_sqlite_store_gets_images_and_metric_history_at_the_steps(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = pl.loggers.MLFlowLogger(
        experiment_name="cam", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts")
    )
    _cb, ours = _fit(tmp_path, logger)
    assert ours == []  # neither our fallback warning nor Lightning's renaming of gradcam++
    assert not (tmp_path / "gradcam").exists()

    client = MlflowClient(tracking_uri=uri)
    run_id = logger.run_id
    plus = mlflow_key(f"{PREFIX}/gradcam++")
    assert plus == f"{PREFIX}/gradcam_plus_plus"
    for method in (f"{PREFIX}/gradcam", plus):
        energy = client.get_metric_history(run_id, f"{method}/energy_in_box")
        assert sorted(m.step for m in energy) == STEPS
        drift = client.get_metric_history(run_id, f"{method}/drift_vs_prev")
        assert [m.step for m in drift] == [STEPS[1]]
    # gradcam and gradcam++ stay two different series
    a = client.get_metric_history(run_id, f"{PREFIX}/gradcam/drift_vs_prev")[0].value
    b = client.get_metric_history(run_id, f"{plus}/drift_vs_prev")[0].value
    assert a != b

    images = [f.path for f in client.list_artifacts(run_id, "images")]
    for method in (f"{PREFIX}/gradcam", plus):
        stem = method.replace("/", "~") + "~sample_01+step+"
        pngs = sorted(p for p in images if p.startswith(f"images/{stem}") and p.endswith(".png"))
        assert [int(p.split("+step+")[1].split("+")[0]) for p in pngs] == STEPS
        local = client.download_artifacts(run_id, pngs[0], str(tmp_path / "down"))
        assert _is_tile(read_png_rgb(local))
    inputs = [p for p in images if "~inputs+step+" in p and p.endswith(".png")]
    assert len(inputs) == 1


def test_csv_logger_gets_pngs_and_scalars_csv_in_its_folder(tmp_path):
    logger = pl.loggers.CSVLogger(str(tmp_path), name="csv", version=0)
    _cb, ours = _fit(tmp_path, logger)
    assert ours == []
    root = tmp_path / "csv" / "version_0" / "gradcam"
    folder = root / "gradcam" / LAYER / "gradcam++" / "sample_01"
    assert sorted(os.listdir(folder)) == [f"step_{s:07d}.png" for s in STEPS]
    assert _is_tile(read_png_rgb(folder / f"step_{STEPS[0]:07d}.png"))
    text = (root / "scalars.csv").read_text()
    assert f"{PREFIX}/gradcam++/drift_vs_prev,{STEPS[1]}," in text
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").exists()  # Lightning's own, intact


@pytest.mark.parametrize("package", [pl, lp], ids=["pytorch_lightning", "lightning.pytorch"])
def test_tensorboard_and_csv_at_once_get_the_same_pictures(tmp_path, package):
    tb = package.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    csv_logger = package.loggers.CSVLogger(str(tmp_path), name="csv", version=0)
    _cb, ours = _fit(tmp_path, [tb, csv_logger], package)
    assert ours == []
    images, scalars = read_events(tmp_path / "tb")
    tag = f"{PREFIX}/gradcam/sample_00"
    assert steps(images[tag]) == STEPS
    folder = tmp_path / "csv" / "version_0" / "gradcam" / tag
    for step, from_tensorboard in images[tag]:
        from_png = read_png_rgb(folder / f"step_{step:07d}.png")
        np.testing.assert_array_equal(from_png, from_tensorboard)
    assert steps(scalars[f"{PREFIX}/gradcam/drift_vs_prev"]) == [STEPS[1]]


@pytest.mark.parametrize("logger", [True, False], ids=["tensorboard", "no_logger"])
def test_fast_dev_run_writes_nothing_and_warns_nothing(tmp_path, logger):
    root = tmp_path / "run"
    root.mkdir()
    cb, ours = _fit(root, logger, fast_dev_run=True)
    assert len(cb.history) == 1  # the pass ran ...
    assert ours == []  # ... silently
    assert [str(p) for p in root.rglob("*")] == []  # ... and left nothing on disk


def test_no_logger_that_takes_pictures_falls_back_to_pngs_with_one_warning(tmp_path):
    class Ledger(pl.loggers.Logger):
        name, version = "ledger", 0

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, *args, **kwargs):
            pass

    messages = []
    sink = sinks_for([Ledger()], str(tmp_path), subdir="gradcam", warn=messages.append)
    assert len(messages) == 1 and "(it has Ledger)" in messages[0]
    assert str(tmp_path / "gradcam") in messages[0]
    sink.image("a/b", np.zeros((4, 4, 3), np.uint8), 3)
    assert (tmp_path / "gradcam" / "a" / "b" / "step_0000003.png").exists()


def test_mlflow_names_that_would_merge_two_series_are_refused(tmp_path):
    from lightning_gradcam.lightning.sinks import MLflowSink

    sink = MLflowSink(logger=None)  # refused before the logger is touched
    sink.scalar("p/gradcam_plus_plus/x", 0.5, 1)
    with pytest.raises(ValueError, match="both become the MLflow name"):
        sink.scalar("p/gradcam++/x", 0.5, 1)
    assert mlflow_key("p/my:method/x") == "p/my_method/x"


def test_tensorboard_and_csv_work_without_wandb_and_mlflow(tmp_path, monkeypatch):
    # A None entry in sys.modules makes "import wandb" fail, as if it were not installed.
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    import lightning_gradcam.lightning.sinks

    fresh = importlib.reload(lightning_gradcam.lightning.sinks)  # the module itself imports neither
    tb = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    csv_logger = pl.loggers.CSVLogger(str(tmp_path), name="csv", version=0)
    sink = fresh.sinks_for([tb, csv_logger], str(tmp_path), warn=pytest.fail)
    sink.image("gradcam/x/gradcam++/grid", np.zeros((4, 4, 3), np.uint8), 2, caption="c")
    sink.scalar("gradcam/x/gradcam++/drift_vs_prev", 0.25, 2)
    sink.flush()
    images, scalars = read_events(tmp_path / "tb")
    assert steps(images["gradcam/x/gradcam++/grid"]) == [2]
    assert scalars["gradcam/x/gradcam++/drift_vs_prev"] == [(2, 0.25)]
    assert (tmp_path / "csv" / "version_0" / "gradcam" / "scalars.csv").exists()
