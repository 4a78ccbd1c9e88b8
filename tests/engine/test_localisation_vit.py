"""A tiny ViT (timm's transformer ``Block``, a small conv patch embedding, class token,
average-pooled patch tokens) trained for seconds on synthetic shapes: with ``layer=None`` the
engine finds its last block and grid; at the attention input the element-wise maps sit on
the deciding object."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.synthetic import SHAPE_NAMES, make_shapes

from .nets import train_on_shapes

timm_vit = pytest.importorskip("timm.models.vision_transformer")

STEPS, BATCH, SIZE = 80, 32, 64


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class PatchEmbed(nn.Module):
    """8x8 patches from three conv stages (a hybrid ViT's stem): ``(B, 64, dim)``."""

    patch_size = (8, 8)

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            conv_bn_relu(3, 8),
            nn.MaxPool2d(2),
            conv_bn_relu(8, 16),
            nn.MaxPool2d(2),
            conv_bn_relu(16, 32),
            nn.MaxPool2d(2),
            nn.Conv2d(32, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    num_prefix_tokens = 1

    def __init__(self, dim: int = 48, grid: int = SIZE // 8, num_classes: int = len(SHAPE_NAMES)):
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.Sequential(timm_vit.Block(dim, num_heads=2, mlp_ratio=2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 1:].mean(1))


@pytest.fixture(scope="module")
def trained() -> TinyViT:
    # One thread: the same float reductions, hence the same trained model, on any machine
    # (CI's default thread count trained a ViT whose Grad-CAM was measurably weaker).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        return train_on_shapes(TinyViT(), STEPS, BATCH, size=SIZE)
    finally:
        torch.set_num_threads(threads)


def _box_scores(maps: torch.Tensor, boxes: torch.Tensor) -> tuple[float, float, float]:
    """``(energy in the box, share of peaks inside it, the box's share of the image)``."""
    ys, xs = torch.arange(SIZE)[None, :, None], torch.arange(SIZE)[None, None, :]
    in_box = (
        (xs >= boxes[:, 0, None, None])
        & (xs <= boxes[:, 2, None, None])
        & (ys >= boxes[:, 1, None, None])
        & (ys <= boxes[:, 3, None, None])
    ).float()
    energy = ((maps * in_box).sum((1, 2)) / maps.sum((1, 2)).clamp_min(1e-12)).mean().item()
    peak = maps.flatten(1).argmax(dim=1)
    inside = in_box.flatten(1)[torch.arange(len(peak)), peak].mean().item()
    return energy, inside, in_box.mean().item()


def test_tiny_vit_default_layer_is_the_last_block_and_its_token_grid(trained):
    held_out = make_shapes(100, size=SIZE, seed=2)
    with torch.no_grad():
        accuracy = (trained(held_out.images).argmax(1) == held_out.labels).float().mean()
    assert accuracy >= 0.9, f"the model did not learn the task (accuracy {accuracy:.2f})"
    methods = ("gradcam", "gradcam++")
    res = CAMEngine(trained, methods=methods).explain(held_out.images, held_out.labels)
    # The last block's output: the head averages its patch tokens, so all of them count.
    assert res.layer == "blocks.0"
    assert (res.layout.kind, res.layout.prefix, res.layout.grid) == ("tokens", 1, (8, 8))
    # No localisation floor at this layer: measured over seeds 0-7 (scripts/seed_margins.py,
    # one thread) every seed learns the task (accuracy 0.96-1.0, random init 0.27), but the
    # channel-averaged maps after the last attention sit on the shape for some seeds only:
    # gradcam energy 0.67-1.98 x the box's area, peaks inside 0.12-0.78; gradcam++ 0.98-2.84 x
    # and 0.28-0.82; a random-init model gives 1.10 x / 0.10. Training 160 or 300 steps does
    # not make it stable (seed 3 at 300 steps: 0.82 x / 0.39). A floor here only measured the
    # CPU's float kernels (a 2-core EPYC trained seed 0 to gradcam++ peaks inside 0.30).
    # What must hold on any machine: the maps are valid and not flat.
    for method in methods:
        maps = res.maps[method][:, 0]
        assert maps.shape == (100, SIZE, SIZE) and bool(torch.isfinite(maps).all())
        assert maps.min() >= 0 and maps.max() <= 1
        assert (maps.flatten(1).amax(1) > 0).float().mean() >= 0.9, method


def test_tiny_vit_element_wise_maps_need_the_attention_input(trained):
    """Element-wise methods (layercam, hirescam) at the last block's output of this
    average-pooled ViT are at chance (measured energy 0.14 for a 0.15 box): after the last
    attention every token carries the whole image. At that attention's input, the block's
    first norm, they sit on the shape: the layer docs/layouts.md names for them.

    Floors from seeds 0-7 (scripts/seed_margins.py, one thread): the worst seed gave energy
    0.50 (hirescam, seed 6) and peaks inside 0.68 (seeds 1 and 3); a random-init model gives
    energy 0.14 / 0.12 (the box is 0.15 of the image) and peaks inside 0.10 / 0.00. Each floor
    sits about halfway between the random-init model and the worst seed."""
    held_out = make_shapes(100, size=SIZE, seed=2)
    methods = ("layercam", "hirescam")
    res = CAMEngine(trained, layer="blocks.0.norm1", methods=methods).explain(
        held_out.images, held_out.labels
    )
    for method in methods:
        energy, inside, _ = _box_scores(res.maps[method][:, 0], held_out.boxes)
        assert energy >= 0.32 and inside >= 0.4, (method, energy, inside)
