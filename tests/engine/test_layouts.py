"""Transformers and channels-last backbones: real timm / transformers / torchvision model code,
random init, small sizes. The right map found automatically, or a clear refusal."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.core.layouts import LayoutError

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

ALL = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "guided_gradcam")


def _explain(model: nn.Module, size=(64, 64), layer=None, methods=ALL, **kwargs):
    torch.manual_seed(0)
    images = torch.rand(2, 3, *size)
    return CAMEngine(model.eval(), layer=layer, methods=methods, **kwargs).explain(images)


def _check_maps(res, grid, size=(64, 64)):
    for method, maps in res.maps.items():
        assert maps.shape == (2, 1, *size), method
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, method
    for method, layer_maps in res.layer_maps.items():
        assert layer_maps.shape == (2, 1, *grid), method


def _timm_swin(**kwargs):
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=64,
        window_size=2,
        embed_dim=24,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        num_classes=5,
        **kwargs,
    )


# ------------------------------------------------------------------ timm


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_timm_class_token_vit_default_is_the_block_before_the_last(size):
    """The class-token head reads only the class token of the last block's output (its
    patch tokens get no gradient: flat maps); the block before feeds the last attention."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=size, depth=3, num_classes=5)
    res = _explain(model, size)
    assert res.layer == "blocks.1"  # a whole block: never the patch embedding or a norm
    assert (res.layout.kind, res.layout.prefix) == ("tokens", 1)
    assert "timm forward_intermediates" in str(res.layout)
    _check_maps(res, (size[0] // 16, size[1] // 16), size)
    assert res.layer_maps["gradcam"].amax() > 0
    last = _explain(model, size, layer="blocks.2", methods=("gradcam",))
    assert last.layer_maps["gradcam"].abs().amax() == 0


def test_timm_deit_distilled_leaves_out_both_prefix_tokens():
    torch.manual_seed(0)
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", img_size=80, depth=2, num_classes=5
    )
    res = _explain(model, (80, 80))
    assert res.layer == "blocks.0"
    assert (res.layout.kind, res.layout.prefix, res.layout.grid) == ("tokens", 2, (5, 5))
    _check_maps(res, (5, 5), (80, 80))


@pytest.mark.parametrize("layer", [None, "layers.3", "norm"])
def test_timm_swin_channels_last_is_not_read_as_stripes(layer):
    """Regression: Swin's (B, h, w, C) stages were read as (B, C, h, w): a 2x192 'map' of
    vertical stripes. The map must be the h x w grid."""
    torch.manual_seed(0)
    res = _explain(_timm_swin(), layer=layer)
    assert res.layer == (layer or "layers.3")
    assert res.layout.kind == "BHWC"
    _check_maps(res, (2, 2))


def test_timm_swin_maps_equal_those_of_the_permuted_stage():
    """The channels-last map is exactly the map of the same features permuted to (B,C,h,w)."""
    torch.manual_seed(0)
    model = _timm_swin().eval()

    class Permuted(nn.Module):
        def __init__(self):
            super().__init__()
            self.swin = model
            self.to_bchw = nn.Identity()

        def forward(self, x):
            features = self.swin.forward_features(x).permute(0, 3, 1, 2)
            return self.swin.forward_head(self.to_bchw(features).permute(0, 2, 3, 1))

    wrapped = Permuted().eval()
    images = torch.rand(2, 3, 64, 64)
    methods = ALL[:5]
    ours = CAMEngine(wrapped, layer="swin.norm", methods=methods).explain(images)
    conv = CAMEngine(wrapped, layer="to_bchw", methods=methods).explain(images)
    assert conv.layout.kind == "BCHW" and ours.layout.kind == "BHWC"
    for method in methods:
        torch.testing.assert_close(ours.layer_maps[method], conv.layer_maps[method])


def test_timm_convnext_keeps_its_conv_layout():
    torch.manual_seed(0)
    res = _explain(timm.create_model("convnext_atto", num_classes=5))
    assert res.layer == "stages.3" and res.layout.kind == "BCHW"  # feature_info's last stage
    _check_maps(res, (2, 2))


# ------------------------------------------------------------------ transformers


def test_transformers_vit_and_deit_with_model_output():
    from transformers import (
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        ViTConfig,
        ViTForImageClassification,
    )

    small = dict(
        image_size=64,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    torch.manual_seed(0)
    for model, prefix in (
        (ViTForImageClassification(ViTConfig(**small)), 1),
        (DeiTForImageClassificationWithTeacher(DeiTConfig(**small)), 2),
    ):
        res = _explain(model)  # the output is a ModelOutput holding .logits
        assert res.layer.endswith(".layers.0"), res.layer  # the block before the last
        assert (res.layout.kind, res.layout.prefix) == ("tokens", prefix)
        _check_maps(res, (4, 4))


def test_transformers_swin_default_layer_and_layout():
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    config = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=24,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        num_labels=5,
    )
    res = _explain(SwinForImageClassification(config))
    assert res.layer == "swin.layernorm"  # its stages return tuples
    assert (res.layout.kind, res.layout.prefix, res.layout.grid) == ("tokens", 0, (2, 2))
    _check_maps(res, (2, 2))


# ------------------------------------------------------------------ torchvision


def test_torchvision_vit_and_swin_at_reduced_size():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head
    res = _explain(vit, methods=ALL[:5])
    assert res.layer == "encoder.layers.encoder_layer_0"  # the block before the last
    assert (res.layout.kind, res.layout.prefix) == ("tokens", 1)
    _check_maps(res, (4, 4))
    assert res.maps["gradcam"].amax() > 0

    swin = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2]
    )
    res = _explain(swin, methods=ALL[:5])
    assert res.layer == "features.3" and res.layout.kind == "BHWC"
    _check_maps(res, (8, 8))


# ------------------------------------------------------------------ golden and refusals


class TokensOfAConv(nn.Module):
    """A conv feature map and, as a second path, its exact reshape into ViT-style tokens
    ``(B, 1 + h*w, C)`` with a class token in front. The head reads the spatial tokens, so
    both layers see exactly the same numbers and gradients."""

    num_prefix_tokens = 1

    def __init__(self, layout: str = "tokens"):
        super().__init__()
        self.layout = layout
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.patch_embed.patch_size = (4, 4)
        self.conv = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
        self.tokens = nn.Identity()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 6))
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        features = self.conv(self.patch_embed(x))  # (B, 6, h, w)
        batch, channels, h, w = features.shape
        if self.layout == "tokens":
            seq = features.flatten(2).transpose(1, 2)
            seq = torch.cat([self.cls_token.expand(batch, -1, -1), seq], dim=1)
            spatial = self.tokens(seq)[:, 1:]
        else:  # channels last
            spatial = self.tokens(features.permute(0, 2, 3, 1)).reshape(batch, h * w, channels)
        return self.fc(spatial.pow(2).mean(dim=1))


@pytest.mark.parametrize("layout", ["tokens", "BHWC"])
def test_golden_tokens_that_reshape_a_conv_map_give_the_conv_map(layout):
    torch.manual_seed(0)
    model = TokensOfAConv(layout).eval()
    images = torch.rand(3, 3, 32, 48)
    methods = ALL[:5]
    conv = CAMEngine(model, layer="conv", methods=methods).explain(images, targets=2)
    ours = CAMEngine(model, layer="tokens", methods=methods).explain(images, targets=2)
    assert ours.layout.kind == layout and ours.layout.grid == (8, 12)
    for method in methods:
        torch.testing.assert_close(ours.layer_maps[method], conv.layer_maps[method])
        torch.testing.assert_close(ours.maps[method], conv.maps[method])
        assert conv.layer_maps[method].amax() > 0


def test_ambiguous_tokens_are_refused_with_how_to_pass_reshape():
    """Without the model's word, 17 tokens of a 16x16 input fit 1+4x4 and 8+3x3: refuse,
    then accept the user's reshape, which gives the golden map."""
    torch.manual_seed(0)
    model = TokensOfAConv().eval()
    del model.patch_embed.patch_size
    TokensOfAConv.num_prefix_tokens = None
    try:
        images = torch.rand(2, 3, 16, 16)
        with pytest.raises(LayoutError, match=r"'tokens' outputs shape \(2, 17, 6\).*reshape="):
            CAMEngine(model, layer="tokens").explain(images)

        def reshape(a):
            return a[:, 1:].reshape(a.shape[0], 4, 4, a.shape[-1]).permute(0, 3, 1, 2)

        ours = CAMEngine(model, layer="tokens", reshape=reshape).explain(images)
        conv = CAMEngine(model, layer="conv").explain(images)
        assert ours.layout.kind == "reshape"
        torch.testing.assert_close(ours.layer_maps["gradcam"], conv.layer_maps["gradcam"])
    finally:
        TokensOfAConv.num_prefix_tokens = 1


def test_channels_first_sequence_and_bad_reshape_are_refused():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Flatten(2), nn.Conv1d(6, 6, 1))
    model = nn.Sequential(model, nn.Flatten(1), nn.Linear(6 * 16 * 16, 3)).eval()
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(LayoutError, match=r"'0.2' outputs a \(B, C, L\) sequence"):
        CAMEngine(model, layer="0.2").explain(images)
    with pytest.raises(LayoutError, match="reshape= turned"):
        CAMEngine(model, layer="0.2", reshape=lambda a: a).explain(images)
    with pytest.raises(TypeError, match="reshape must be a callable"):
        CAMEngine(model, reshape="tokens")


def test_as_many_channels_as_rows_and_columns_is_decided_by_the_layers_modules():
    """(B, 16, 16, 16) fits both readings by shape; the module that made the channels
    says where they are, and with nothing to say the engine refuses."""
    from torchvision.models.convnext import CNBlock

    from lightning_gradcam.core.layouts import detect_layout

    out = torch.zeros(2, 16, 16, 16)
    conv = nn.Conv2d(3, 16, 3, padding=1)
    mlp = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16))
    block = CNBlock(16, layer_scale=1e-6, stochastic_depth_prob=0.0)  # ends Linear, Permute
    assert detect_layout(out, "conv", (32, 32), conv).kind == "BCHW"
    assert detect_layout(out, "mlp", (32, 32), mlp).kind == "BHWC"
    assert detect_layout(out, "block", (32, 32), block).kind == "BCHW"
    with pytest.raises(LayoutError, match=r"'act' outputs shape \(2, 16, 16, 16\)"):
        detect_layout(out, "act", (32, 32), nn.GELU())


def test_the_input_aspect_ratio_settles_an_ambiguous_token_count():
    """Issue 26: with no word from the model, 61 tokens of a 96x160 input fit 1 + 6x10
    (stride 16) and 7 + 6x9 (stride 18); only 6x10 has the input's 3:5 shape, so it is read
    so, and gives the conv map. At a square input two readings (1 + 4x4, 8 + 3x3) have the
    same shape: still refused."""
    torch.manual_seed(0)
    model = TokensOfAConv().eval()
    model.patch_embed = nn.Conv2d(3, 8, 16, stride=16)  # no patch_size: the model says nothing
    TokensOfAConv.num_prefix_tokens = None
    try:
        images = torch.rand(2, 3, 96, 160)
        ours = CAMEngine(model, layer="tokens", methods=ALL[:5]).explain(images)
        conv = CAMEngine(model, layer="conv", methods=ALL[:5]).explain(images)
        assert (ours.layout.kind, ours.layout.grid, ours.layout.prefix) == ("tokens", (6, 10), 1)
        assert "aspect ratio" in ours.layout.source
        for method in ALL[:5]:
            torch.testing.assert_close(ours.layer_maps[method], conv.layer_maps[method])
        with pytest.raises(LayoutError, match=r"cannot tell how the 17 tokens"):
            CAMEngine(model, layer="tokens").explain(torch.rand(2, 3, 64, 64))
    finally:
        TokensOfAConv.num_prefix_tokens = 1
