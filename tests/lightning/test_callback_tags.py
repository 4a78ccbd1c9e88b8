"""Issue 26.5: the user learns the layer chosen and the exact tags to monitor, at fit start:
one logged line and ``callback.tags``, equal to the scalars the first pass logs."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from cam_events import make_trainer, read_events
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradcam import GradCAMCallback

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.timeout(180)

SIZE, CLASSES = 32, 3


class ViTModule(pl.LightningModule):
    """A 2-layer transformers ViT: its default layer is ``vit.layers.0`` (the block before
    the last, since the head reads the class token only), not the docs table's
    ``vit.layers.1`` of a 3-layer config."""

    def __init__(self):
        super().__init__()
        config = transformers.ViTConfig(
            image_size=SIZE,
            patch_size=8,
            num_labels=CLASSES,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=2,
            num_hidden_layers=2,
        )
        self.net = transformers.ViTForImageClassification(config)

    def forward(self, images):
        return self.net(pixel_values=images).logits

    def training_step(self, batch, _index):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, _index):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-2)


def _data(n: int = 8):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0]]).repeat(n, 1)
    return images, labels, boxes


def _fit(tmp_path, callbacks, caplog, epochs: int = 2):
    pl.seed_everything(0, verbose=False)
    images, labels, boxes = _data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    trainer = make_trainer(
        pl,
        tmp_path,
        callbacks,
        max_epochs=epochs,
        limit_train_batches=1,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(ViTModule(), loader, loader)
    return trainer


def test_fit_start_logs_the_default_layer_and_the_tags_and_callback_tags_holds_them(
    tmp_path, caplog
):
    images, labels, boxes = _data()
    cb = GradCAMCallback(methods=("gradcam", "hirescam"), images=images[:4], boxes=boxes[:4])
    with pytest.raises(RuntimeError, match="known from fit start"):
        _ = cb.tags
    _fit(tmp_path, [cb], caplog)

    prefix = "gradcam/net.vit.layers.0"
    expected = {
        f"{prefix}/{method}/{name}"
        for method in ("gradcam", "hirescam")
        for name in ("energy_in_box", "pointing_game", "no_evidence_rate")
    }
    assert set(cb.tags) == expected
    lines = [r.getMessage() for r in caplog.records if "GradCAMCallback:" in r.getMessage()]
    assert len(lines) == 1, lines  # one line, once
    assert "classification task, layer 'net.vit.layers.0'" in lines[0]
    assert all(tag in lines[0] for tag in expected)

    _, scalars = read_events(tmp_path / "tb")
    passes = sorted({step for tag in expected for step, _ in scalars[tag]})
    assert len(passes) == 2
    first = {tag for tag, series in scalars.items() if series[0][0] == passes[0]}
    first = {tag for tag in first if tag.startswith(prefix) and "drift" not in tag}
    assert first == expected  # exactly what the first pass logs, nothing more or less
    for tag in expected:  # and at every pass
        assert [step for step, _ in scalars[tag]] == passes


def test_a_tag_from_the_log_line_is_a_monitor_that_works_from_epoch_0(tmp_path, caplog):
    images, labels, boxes = _data()
    tag = "gradcam/net.vit.layers.0/gradcam/pointing_game"
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=tag, mode="max")
    cb = GradCAMCallback(methods="gradcam", images=images[:4], boxes=boxes[:4])
    trainer = _fit(tmp_path, [cb, checkpoint], caplog, epochs=1)
    assert tag in cb.tags and checkpoint.best_model_path
    assert tag in trainer.callback_metrics


def test_without_boxes_or_masks_the_line_says_there_is_nothing_to_monitor(tmp_path, caplog):
    cb = GradCAMCallback(methods="gradcam", num_samples=2)
    _fit(tmp_path, [cb], caplog, epochs=1)
    assert cb.tags == ()
    (line,) = [r.getMessage() for r in caplog.records if "GradCAMCallback:" in r.getMessage()]
    assert "no scalar to monitor: pass boxes= or masks=" in line
    assert "layer 'net.vit.layers.0'" in line
