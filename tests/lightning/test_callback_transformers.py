"""GradCAMCallback on transformers and channels-last backbones, in real (1-2 step) Lightning
runs: timm ViT / DeiT (distilled) / Swin / ConvNeXt with tuple batches, transformers ViT /
DeiT / Swin with dict batches and ``ModelOutput`` results. ``layer=None`` everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from cam_events import make_trainer, read_events, steps
from torch.utils.data import DataLoader, Dataset

from lightning_gradcam import CAMEngine, GradCAMCallback

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.timeout(180)

SIZE, CLASSES = 64, 4


class Shapes(Dataset):
    """Random images, as tuples or as transformers-style dicts."""

    def __init__(self, as_dict: bool, n: int = 8):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, SIZE, SIZE, generator=generator)
        self.labels = torch.randint(0, CLASSES, (n,), generator=generator)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if self.as_dict:
            return {"pixel_values": self.images[i], "labels": self.labels[i]}
        return self.images[i], self.labels[i]


class Classifier(pl.LightningModule):
    """``net`` maps images to logits, or to a ``ModelOutput`` with ``.logits``."""

    def __init__(self, net: torch.nn.Module, as_dict: bool):
        super().__init__()
        self.net, self.as_dict = net, as_dict

    def forward(self, images):
        return self.net(pixel_values=images) if self.as_dict else self.net(images)

    def _split(self, batch):
        return (batch["pixel_values"], batch["labels"]) if self.as_dict else batch

    def training_step(self, batch, _index):
        images, labels = self._split(batch)
        out = self(images)
        logits = out.logits if self.as_dict else out
        return F.cross_entropy(logits, labels)

    def validation_step(self, batch, _index):
        images, labels = self._split(batch)
        out = self(images)
        logits = out.logits if self.as_dict else out
        self.log("val_loss", F.cross_entropy(logits, labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _timm(name: str, **kwargs):
    return lambda: timm.create_model(name, num_classes=CLASSES, **kwargs)


def _hf(kind: str):
    small = dict(image_size=SIZE, num_labels=CLASSES, num_attention_heads=2, num_hidden_layers=2)
    small.update(patch_size=16, hidden_size=32, intermediate_size=64)

    def build():
        if kind == "vit":
            return transformers.ViTForImageClassification(transformers.ViTConfig(**small))
        if kind == "deit":
            config = transformers.DeiTConfig(**small)
            return transformers.DeiTForImageClassificationWithTeacher(config)
        config = transformers.SwinConfig(
            image_size=SIZE,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1, 1],
            num_heads=[1, 1, 1],
            window_size=2,
            num_labels=CLASSES,
        )
        return transformers.SwinForImageClassification(config)

    return build


CASES = {
    "timm-vit": (
        _timm("vit_tiny_patch16_224", img_size=SIZE, depth=2),
        False,
        "net.blocks.0",  # class-token head: the block before the last
        (4, 4),
    ),
    "timm-deit-distilled": (
        _timm("deit_tiny_distilled_patch16_224", img_size=SIZE, depth=2),
        False,
        "net.blocks.0",  # class-token head: the block before the last
        (4, 4),
    ),
    "timm-swin": (
        _timm(
            "swin_tiny_patch4_window7_224",
            img_size=SIZE,
            window_size=2,
            embed_dim=16,
            depths=(1, 1, 1),
            num_heads=(1, 1, 1),
        ),
        False,
        "net.layers.2",
        (4, 4),
    ),
    "timm-convnext": (_timm("convnext_atto"), False, "net.stages.3", (2, 2)),
    "hf-vit": (_hf("vit"), True, "net.vit.layers.0", (4, 4)),
    "hf-deit": (_hf("deit"), True, "net.deit.layers.0", (4, 4)),
    "hf-swin": (_hf("swin"), True, "net.swin.layernorm", (4, 4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_callback_logs_maps_for_transformers_with_layer_none(tmp_path, case):
    build, as_dict, layer, grid = CASES[case]
    pl.seed_everything(0, verbose=False)
    module = Classifier(build(), as_dict)
    data = Shapes(as_dict)
    cb = GradCAMCallback(methods=("gradcam", "hirescam"), num_samples=2)
    trainer = make_trainer(
        pl, tmp_path, [cb], max_epochs=1, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    images, _ = read_events(tmp_path / "tb")
    for method in ("gradcam", "hirescam"):
        tag = f"gradcam/{layer}/{method}/sample_01"
        assert tag in images, sorted(images)[:6]
        assert steps(images[tag]) == [2]
    # The same default, seen through the engine: the layer's grid, not a misread axis
    # (Swin's stripes).
    result = CAMEngine(module, methods="gradcam").explain(data.images[:2])
    assert result.layer == layer
    assert tuple(result.layer_maps["gradcam"].shape[-2:]) == grid, str(result.layout)


def test_callback_passes_reshape_to_the_engine(tmp_path):
    calls = []

    def reshape(tokens):  # ViT tokens (B, 1 + 4*4, C) -> (B, C, 4, 4)
        calls.append(tuple(tokens.shape))
        return tokens[:, 1:].reshape(len(tokens), 4, 4, -1).permute(0, 3, 1, 2)

    with pytest.raises(TypeError, match="reshape must be a callable"):
        GradCAMCallback(reshape="tokens")
    pl.seed_everything(0, verbose=False)
    module = Classifier(CASES["timm-vit"][0](), as_dict=False)
    data = Shapes(as_dict=False)
    cb = GradCAMCallback(layer="net.blocks.1.norm1", methods="gradcam", reshape=reshape)
    trainer = make_trainer(
        pl, tmp_path, [cb], max_epochs=1, limit_train_batches=1, limit_val_batches=1
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    assert (4, 17, 192) in calls  # the 4 validation samples, activations and gradients
    images, _ = read_events(tmp_path / "tb")
    assert "gradcam/net.blocks.1.norm1/gradcam/sample_03" in images


class _Wide(Dataset):
    """Non-square (96x160) images as transformers-style dicts."""

    def __init__(self, n: int = 4):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 96, 160, generator=generator)
        self.labels = torch.randint(0, CLASSES, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def _pvt_v2():
    config = transformers.PvtV2Config(
        num_labels=CLASSES,
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 1, 1],
        mlp_ratios=[2, 2, 2, 2],
        sr_ratios=[2, 2, 1, 1],
    )
    return transformers.PvtV2ForImageClassification(config)


def _fit_wide(root, layer):
    pl.seed_everything(0, verbose=False)
    module = Classifier(_pvt_v2(), as_dict=True)
    cb = GradCAMCallback(layer=layer, methods=("gradcam", "hirescam"), num_samples=2)
    trainer = make_trainer(pl, root, [cb], max_epochs=1, limit_train_batches=1)
    loader = DataLoader(_Wide(), batch_size=2)
    trainer.fit(module, loader, loader)
    return cb, read_events(root / "tb")[0]


def test_naming_the_default_layer_of_a_token_model_at_a_non_square_input_works_alike(tmp_path):
    """Issue 26.2: PVTv2's token layer at 96x160 was refused ("cannot tell how the N tokens
    form a grid") when named, while ``layer=None`` read it with the library's layout."""
    default_cb, default_images = _fit_wide(tmp_path / "default", None)
    layer = default_cb.task.layer_name
    assert layer.startswith("net.pvt_v2.encoder")
    named_cb, named_images = _fit_wide(tmp_path / "named", layer)
    assert named_cb.task.layer_name == layer
    for method in ("gradcam", "hirescam"):
        tag = f"gradcam/{layer}/{method}/grid"
        assert len(named_images[tag]) == len(default_images[tag]) >= 1
        for (_, ours), (_, theirs) in zip(named_images[tag], default_images[tag]):
            assert np.array_equal(ours, theirs), tag
