"""Finding the layer: dotted names, wrappers (DataParallel, DDP, torch.compile), automatic."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lightning_gradcam import CAMEngine, LayerNotFoundError
from lightning_gradcam.core.layers import (
    expand_layer_names,
    find_last_4d_layer,
    resolve_layer,
    unwrap_model,
)

from .nets import DeepHeadNet, GapNet, seeded, tiny_images


@pytest.fixture(scope="module")
def model():
    return seeded(DeepHeadNet, seed=5).eval()


@pytest.fixture(scope="module")
def images():
    return tiny_images(batch=2, size=16, seed=6)


def test_dotted_names(model):
    assert resolve_layer(model, "stem") is model.stem
    assert resolve_layer(model, "block.2") is model.block[2]
    assert resolve_layer(model, "stem.0") is model.stem[0]


def test_default_layer_is_the_last_4d_output(model, images):
    # DeepHeadNet: block (Sequential, finishes after block.3) is the last module with a
    # spatial 4-D output; the functional ReLU and the mean after it are not modules.
    engine = CAMEngine(model, layer=None)
    res = engine.explain(images)
    assert res.layer == "block" and engine.layer == "block"
    assert res.layer_maps["gradcam"].shape == (2, 1, 8, 8)
    explicit = CAMEngine(model, layer="block").explain(images)
    torch.testing.assert_close(res.maps["gradcam"], explicit.maps["gradcam"])


def test_default_layer_skips_pools_and_1x1_outputs():
    model = GapNet()  # ... features -> AdaptiveAvgPool2d (4-D, but 1x1) -> fc
    assert find_last_4d_layer(model, lambda: model(tiny_images())) == "features"

    class PoolLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pool(self.conv(x)).mean(dim=(2, 3)))

    net = PoolLast()
    assert find_last_4d_layer(net, lambda: net(tiny_images())) == "conv"


def test_data_parallel_wrapper(model, images):
    wrapped = nn.DataParallel(model)  # on a CPU-only machine it just calls the module
    assert unwrap_model(wrapped) is model
    assert resolve_layer(wrapped, "module.block") is model.block
    assert resolve_layer(wrapped, "block") is model.block
    plain = CAMEngine(model, layer="block").explain(images)
    for name in ("block", "module.block"):
        res = CAMEngine(wrapped, layer=name).explain(images)
        torch.testing.assert_close(res.maps["gradcam"], plain.maps["gradcam"])
        assert res.layer == name


def test_distributed_data_parallel_wrapper(model, images, tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    created = not dist.is_initialized()
    if created:
        store = dist.FileStore(str(tmp_path / "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(wrapped) is model
        plain = CAMEngine(model, layer="block").explain(images)
        res = CAMEngine(wrapped, layer="module.block").explain(images)
        torch.testing.assert_close(res.maps["gradcam++"], plain.maps["gradcam++"])
    finally:
        if created:
            dist.destroy_process_group()


def test_torch_compile_wrapper(model, images):
    start = time.perf_counter()
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert unwrap_model(compiled) is model
    assert resolve_layer(compiled, "_orig_mod.block.2") is model.block[2]
    plain = CAMEngine(model, layer="block").explain(images)
    res = CAMEngine(compiled, layer="_orig_mod.block").explain(images)
    torch.testing.assert_close(res.maps["gradcam"], plain.maps["gradcam"])
    auto = CAMEngine(compiled, layer=None).explain(images)
    assert auto.layer == "block"
    assert time.perf_counter() - start < 30, "explaining a compiled model should not compile it"


def test_nested_wrappers():
    inner = GapNet()
    wrapped = nn.DataParallel(torch.compile(inner))
    assert unwrap_model(wrapped) is inner
    assert resolve_layer(wrapped, "module._orig_mod.features.2") is inner.features[2]
    assert resolve_layer(wrapped, "features.2") is inner.features[2]


def test_wrong_name_lists_close_names(model):
    with pytest.raises(LayerNotFoundError) as info:
        resolve_layer(model, "blok.2")
    message = str(info.value)
    assert "'blok.2'" in message and "'block.2'" in message and "layer=None" in message
    assert isinstance(info.value, ValueError)
    # Raised by the engine's constructor, before any forward pass.
    with pytest.raises(LayerNotFoundError, match="'stem'"):
        CAMEngine(model, layer="stemm")
    with pytest.raises(LayerNotFoundError, match="non-empty"):
        resolve_layer(model, "")


def test_a_unique_suffix_names_the_nested_layer_and_an_ambiguous_one_fails():
    import torchvision

    from lightning_gradcam.core.layers import LayerNotFoundError, resolve_layer

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=3)

    wrapper = Wrapper()
    assert resolve_layer(wrapper, "layer4") is wrapper.net.layer4
    assert resolve_layer(wrapper, "layer4.1") is wrapper.net.layer4[1]
    with pytest.raises(
        LayerNotFoundError, match=r"ambiguous.*'net\.layer1\.0\.conv1'.*full dotted"
    ):
        resolve_layer(wrapper, "conv1")


def test_an_ambiguous_suffix_lists_candidates_shortest_path_first():
    # timm's efficientnet: "bn2" ends the head's model.bn2 and a bn2 in each of 16 blocks.
    import timm

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3)

    holder = Holder()
    with pytest.raises(LayerNotFoundError) as caught:
        resolve_layer(holder, "bn2")
    message = str(caught.value)
    candidates = [n for n, _ in holder.named_modules() if n.endswith(".bn2")]
    assert len(candidates) == 17
    assert "17 layers end with it: 'model.bn2', 'model.blocks." in message
    assert message.count("'model.") == 10 and "and 7 more; pass the full dotted name" in message


def test_the_not_found_hint_is_the_callers():
    from lightning_gradcam.core.layers import DEFAULT_LAYER_HINT

    model = seeded(DeepHeadNet, seed=5)
    with pytest.raises(LayerNotFoundError, match="layer=None for the model.s default"):
        resolve_layer(model, "stemm")
    assert "layer=None" in DEFAULT_LAYER_HINT
    with pytest.raises(LayerNotFoundError) as caught:
        resolve_layer(model, "stemm", hint=None)
    assert str(caught.value).endswith("from model.named_modules().")
    with pytest.raises(LayerNotFoundError) as caught:
        resolve_layer(model, "stemm", hint="or one of the detector's named layers")
    assert str(caught.value).endswith(", or one of the detector's named layers.")
    assert "4-D" not in str(caught.value)


def test_full_layer_name_however_the_layer_was_given():
    import torchvision

    from lightning_gradcam.core.layers import full_layer_name

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=3)

    wrapper = Wrapper()
    assert full_layer_name(wrapper, "layer4") == "net.layer4"
    assert full_layer_name(wrapper, "net.layer4") == "net.layer4"
    assert full_layer_name(wrapper, "layer4.1.conv2") == "net.layer4.1.conv2"
    assert full_layer_name(nn.DataParallel(wrapper), "module.net.layer4") == "net.layer4"
    with pytest.raises(LayerNotFoundError, match="ambiguous"):
        full_layer_name(wrapper, "conv1")


def test_layer_globs_expand_to_direct_children_in_module_order(model):
    assert expand_layer_names(model, ["block.*"]) == ("block.0", "block.1", "block.2", "block.3")
    assert expand_layer_names(model, ["stem.?", "block.1", "stem.0"]) == (
        "stem.0",
        "stem.1",
        "stem.2",
        "block.1",
    )
    assert expand_layer_names(model, ["*"]) == ("stem", "block", "drop", "fc")


def test_layer_globs_that_match_nothing_are_refused(model):
    with pytest.raises(LayerNotFoundError, match="no layer named 'blok'.*'block'"):
        expand_layer_names(model, ["blok.*"])
    with pytest.raises(LayerNotFoundError, match="no layer of DeepHeadNet matches 'fc.*'"):
        expand_layer_names(model, ["fc.*"])
    with pytest.raises(LayerNotFoundError, match="no layer named 'stemm'"):
        expand_layer_names(model, ["stemm"])


def test_layers_does_not_import_layouts():
    """One-way: layouts (and the default-layer heuristics) build on layers, never back."""
    import ast
    from pathlib import Path

    import lightning_gradcam.core.layers as layers_module

    tree = ast.parse(Path(layers_module.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not any("layouts" in name or "heuristics" in name for name in imported), imported


class _ClassTokenViT(nn.Module):
    """A user's own ViT (no library metadata): three pre-norm blocks, a class-token head."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(_Block(dim) for _ in range(3))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Linear(dim, dim)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def test_a_class_token_vit_without_metadata_gets_the_block_before_the_last():
    """Shapes alone: the last block's patch tokens get no gradient from a class-token head
    (an all-zero map), so the default is the block before it, a whole block."""
    model = seeded(_ClassTokenViT, seed=3).eval()
    images = tiny_images(batch=2, size=32, seed=4)
    res = CAMEngine(model, methods=("gradcam",)).explain(images)
    assert res.layer == "blocks.1"
    assert (res.layout.kind, res.layout.prefix, res.layout.grid) == ("tokens", 1, (8, 8))
    assert res.layer_maps["gradcam"].amax() > 0
    last = CAMEngine(model, layer="blocks.2", methods=("gradcam",)).explain(images)
    assert last.layer_maps["gradcam"].abs().amax() == 0
