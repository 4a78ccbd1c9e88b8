"""GradCAMCallback(metrics_on="validation") on a segmenter reuses the forward of the module's
own validation_step (core.tap): one forward per validation batch after the first, the same
whole-set values as the measure's own forward, and training and val_loss untouched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradcam import GradCAMCallback
from lightning_gradcam.core.synthetic import make_segmentation_shapes

from .seg_nets import TinySegmenter

pl = pytest.importorskip("lightning.pytorch")
pytestmark = pytest.mark.timeout(300)
METHODS = ("gradcam", "hirescam")
EPOCHS = 5  # on 256 training scenes: enough for maps with positive evidence


class Counting(pl.LightningModule):
    """A segmenter that counts its forwards; validation_step calls it on the batch."""

    def __init__(self):
        super().__init__()
        self.net = TinySegmenter(3)
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return self.net(x)

    def training_step(self, batch, batch_idx):
        images, masks = batch
        return F.cross_entropy(self(images), masks)

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        logits = self(images)
        assert not logits.requires_grad  # as under Lightning's no_grad, hooks or not
        self.log("val_loss", F.cross_entropy(logits, masks))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-2)


class CallsSubmodule(Counting):
    """A validation_step the measure cannot reuse: it calls the network, not the module."""

    def validation_step(self, batch, batch_idx):
        images, masks = batch
        self.log("val_loss", F.cross_entropy(self.net(images), masks))


class ForwardsPerBatch(pl.Callback):
    """The module's forwards within each validation batch (the measure's own included)."""

    def __init__(self):
        self.per_epoch: list[list[int]] = []
        self._at_start = 0

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.per_epoch.append([])

    def on_validation_batch_start(self, trainer, pl_module, *args):
        self._at_start = pl_module.forwards

    def on_validation_batch_end(self, trainer, pl_module, *args):
        if not trainer.sanity_checking:
            self.per_epoch[-1].append(pl_module.forwards - self._at_start)


def _loader(num_images, seed, batch_size, shuffle):
    data = make_segmentation_shapes(num_images, 32, seed=seed, num_objects=2, num_classes=2)
    return DataLoader(
        TensorDataset(data.images, data.masks), batch_size=batch_size, shuffle=shuffle
    )


def _fit(root, module_class, callbacks):
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        deterministic=True,
    )
    module = module_class()
    trainer.fit(module, _loader(256, 0, 32, True), _loader(24, 1, 8, False))
    return module, trainer


def _scalars(trainer, prefix):
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def test_one_forward_per_batch_and_the_values_of_the_measures_own_forward(tmp_path):
    plain, plain_trainer = _fit(tmp_path / "plain", Counting, [])
    counter = ForwardsPerBatch()
    cb = GradCAMCallback(methods=METHODS, metrics_on="validation")
    watched, trainer = _fit(tmp_path / "watched", Counting, [cb, counter])

    # Batch 0 of the first epoch: the measure's own forward, checked against the step's;
    # every batch after it: validation_step's forward serves the measure too.
    assert counter.per_epoch == [[2, 1, 1]] + [[1, 1, 1]] * (EPOCHS - 1)
    assert _scalars(trainer, "val_") == _scalars(plain_trainer, "val_")
    for name, value in plain.state_dict().items():
        assert torch.equal(value, watched.state_dict()[name]), name

    own = GradCAMCallback(methods=METHODS, metrics_on="validation")
    own_counter = ForwardsPerBatch()
    _, own_trainer = _fit(tmp_path / "own", CallsSubmodule, [own, own_counter])
    assert own_counter.per_epoch == [[1, 1, 1]] * EPOCHS  # the measure's forwards only
    got, want = _scalars(trainer, "gradcam/"), _scalars(own_trainer, "gradcam/")
    assert set(got) == set(want)
    layer = cb.task.layer_name
    for method in METHODS:
        for c in (1, 2):
            assert f"gradcam/{layer}/{method}/class_{c:02d}/energy_in_mask" in got
    assert got[f"gradcam/{layer}/hirescam/no_evidence_rate"] < 1.0  # maps with evidence
    for tag, value in want.items():
        assert math.isclose(got[tag], value, rel_tol=1e-6, abs_tol=1e-7), (tag, got[tag], value)
