"""GradCAMCallback() on a segmenter fed (images, masks) batches: the segmentation task is
chosen by itself, and a model that segments well logs a high energy_in_mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cam_events import read_events
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradcam import GradCAMCallback
from lightning_gradcam.core.synthetic import make_segmentation_shapes
from lightning_gradcam.tasks import SegmentationTask, registered_tasks

from .seg_nets import TinySegmenter

pl = pytest.importorskip("lightning.pytorch")


class SegmentationModule(pl.LightningModule):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.net = TinySegmenter(num_classes)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        images, masks = batch
        return F.cross_entropy(self(images), masks)

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        self.log("val_loss", F.cross_entropy(self(images), masks))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-2)


def _loader(num_images: int, seed: int, shuffle: bool) -> DataLoader:
    data = make_segmentation_shapes(num_images, 32, seed=seed, num_objects=2, num_classes=2)
    return DataLoader(TensorDataset(data.images, data.masks), batch_size=32, shuffle=shuffle)


def test_segmentation_is_registered_before_classification():
    names = [task.name for task in registered_tasks()]
    assert names.index("segmentation") < names.index("classification")


def test_fit_logs_energy_in_mask_high_on_a_model_that_segments(tmp_path):
    torch.manual_seed(0)
    callback = GradCAMCallback(num_samples=4)  # the segmentation task's methods: gradcam, hirescam
    trainer = pl.Trainer(
        max_epochs=12,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
    )
    module = SegmentationModule()
    trainer.fit(module, _loader(256, 0, True), _loader(8, 1, False))
    assert isinstance(callback.task, SegmentationTask)

    val = make_segmentation_shapes(8, 32, seed=1, num_objects=2, num_classes=2)
    with torch.no_grad():  # the model does segment: shapes found, background left
        predicted = module.eval()(val.images).argmax(1)
    found, shapes = predicted > 0, val.masks > 0
    # Floors from seeds 0-4 (scripts/seed_margins.py --only segmentation): worst foreground
    # IoU 0.77 (seed 2), energy_in_mask 0.83 (gradcam, seed 0), pointing_game 1.0 for all; an
    # untrained model finds no shape (IoU 0.0) and a uniform map puts ~0.12 in the masks.
    # Each floor sits about halfway between those.
    assert float((found & shapes).sum() / (found | shapes).sum()) > 0.45  # foreground IoU
    # What a uniform map would put in the masks of the 4 fixed images' classes.
    uniform = [
        float((mask == c).float().mean()) for mask in val.masks[:4] for c in mask.unique() if c
    ]
    uniform_share = sum(uniform) / len(uniform)
    assert uniform_share < 0.15

    images, scalars = read_events(tmp_path)
    prefix = "gradcam/net.features"
    # callback.tags: exactly the scalars of the first pass but drift, per class included
    ours = {t: series for t, series in scalars.items() if t.startswith(prefix)}
    first_step = min(series[0][0] for series in ours.values())
    first = {t for t, series in ours.items() if series[0][0] == first_step and "drift" not in t}
    assert set(callback.tags) == first
    assert f"{prefix}/gradcam/class_01/energy_in_mask" in callback.tags
    for method in ("gradcam", "hirescam"):
        energy = scalars[f"{prefix}/{method}/energy_in_mask"]
        assert len(energy) >= 5  # from the first epoch the model predicts shapes on
        assert energy[-1][1] > max(0.5, 4 * uniform_share), energy
        assert scalars[f"{prefix}/{method}/pointing_game"][-1][1] > 0.6
        assert f"{prefix}/{method}/drift_vs_prev" in scalars
        assert f"{prefix}/{method}/grid" in images
        assert any(tag.startswith(f"{prefix}/{method}/image_00_class_") for tag in images)
        assert f"{prefix}/{method}/energy_in_mask" in trainer.callback_metrics
    strip = callback.filmstrip("gradcam")
    assert strip.ndim == 3 and strip.shape[2] == 3

    # A checkpoint brings the task, its samples and the drift references back.
    path = tmp_path / "state.pt"
    torch.save(callback.state_dict(), path)
    resumed = GradCAMCallback(methods=("gradcam", "hirescam"), num_samples=4)
    resumed.load_state_dict(torch.load(path, weights_only=False))
    assert isinstance(resumed.task, SegmentationTask)
    assert torch.equal(
        resumed.task._tracker.first["gradcam"].maps, callback.task._tracker.first["gradcam"].maps
    )
    assert set(resumed.task._class_tracker.previous) == set(callback.task._class_tracker.previous)


def _fit(root, callbacks) -> dict[str, torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.TensorBoardLogger(str(root), name="tb", version=0),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        deterministic=True,
        log_every_n_steps=1,
    )
    module = SegmentationModule()
    trainer.fit(module, _loader(64, 0, True), _loader(8, 1, False))
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_training_with_the_callback_gives_the_same_weights(tmp_path):
    """Recognising the task (a probing forward), finding the layer and the passes leave no
    trace: weights bit-identical to a run without the callback."""
    callback = GradCAMCallback(methods=("gradcam", "hirescam"), num_samples=4)
    with_cam = _fit(tmp_path / "with", [callback])
    assert callback.history and isinstance(callback.task, SegmentationTask)
    without = _fit(tmp_path / "without", [])
    assert all(torch.equal(with_cam[k], without[k]) for k in without)


def test_a_recognised_segmenter_refuses_faithfulness_before_the_first_step(tmp_path):
    """faithfulness= is measured by the classification task only; on a segmenter recognised
    at the first batch it is refused then, never dropped in silence, and no step is taken."""
    torch.manual_seed(0)
    module = SegmentationModule()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[GradCAMCallback(num_samples=2, faithfulness="deletion")],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ValueError, match="the segmentation task does not measure faithfulness"):
        trainer.fit(module, _loader(8, 0, True), _loader(4, 1, False))
    assert trainer.global_step == 0
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name
