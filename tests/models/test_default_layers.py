"""``layer=None`` across the model libraries: real timm, torchvision and transformers model
code, random init, small inputs. The default layer is a whole block or stage whose grid is
the library's own last feature grid, and a change in one image corner moves its
activations most in that corner of the grid.

The default run checks a fixed sample (every model the issue named); ``-m slow`` sweeps
one model per timm architecture module, every torchvision classifier and every
transformers image classifier (``docs/make_default_layers.py`` writes the docs table from
the same sweep)."""

from __future__ import annotations

import logging

import pytest
import torch

from lightning_gradcam import CAMEngine
from lightning_gradcam.models.defaults import choose_default_layer
from lightning_gradcam.models.networks import RANDOM_WEIGHTS, prepare_network

from . import zoo

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

# (timm module, model, input size) -> (default layer, its grid): the long tail.
TIMM_SAMPLE = {
    ("nest", "nest_tiny", (224, 224)): ("levels.2", (14, 14)),  # was a 1x196 striped map
    ("tnt", "tnt_s_patch16_224", (96, 160)): ("blocks.11.norm_out", (6, 10)),  # was a raw error
    ("crossvit", "crossvit_tiny_240", (96, 160)): ("blocks.2.blocks.1", (14, 14)),
    ("mlp_mixer", "gmlp_s16_224", (96, 160)): ("blocks.29", (6, 10)),  # was stem.proj
    ("levit", "levit_128s", (224, 224)): ("stages.2", (4, 4)),  # was the stem
    ("hiera", "hiera_tiny_224", (224, 224)): ("blocks.11", (7, 7)),  # was blocks.3.attn.qkv
    ("efficientformer", "efficientformer_l1", (224, 224)): ("stages.3", (7, 7)),  # refused
    ("vision_transformer", "vit_tiny_patch16_224", (96, 160)): ("blocks.10", (6, 10)),
    ("swin_transformer", "swin_tiny_patch4_window7_224", (96, 160)): ("layers.3", (3, 5)),
}

# transformers class -> (default layer, grid) at the zoo's input size.
HF_SAMPLE = {
    "CvtForImageClassification": ("cvt.encoder.stages.2.layers.8", (6, 10)),
    "PvtV2ForImageClassification": ("pvt_v2.encoder.layers.3.layer_norm", (3, 5)),
    "LevitForImageClassification": ("levit.encoder.stages.2", (2, 2)),
    "PvtForImageClassification": ("pvt.encoder.block.3.1.layer_norm_1", (3, 3)),
    "FocalNetForImageClassification": ("focalnet.encoder.stages.3.layers.1", (3, 5)),
    "ViTForImageClassification": ("vit.layers.1", (6, 10)),  # the block before the last
}


def _check_quietly(built: zoo.Built, caplog) -> zoo.Checked:
    with caplog.at_level(logging.WARNING, logger="lightning_gradcam"):
        checked = zoo.check(built)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    return checked


@pytest.mark.parametrize("module, name, size", list(TIMM_SAMPLE))
def test_timm_long_tail(module, name, size, caplog):
    built = zoo.build_timm(module, name, size)
    assert built is not None and built.size == size
    layer, grid = TIMM_SAMPLE[module, name, size]
    checked = _check_quietly(built, caplog)
    assert (checked.layer, checked.grid) == (layer, grid)
    assert checked.source.startswith("timm forward_intermediates")
    assert zoo.named_layer_agrees(built) == layer  # issue 26: naming it must work too


@pytest.mark.parametrize("class_name", list(HF_SAMPLE))
def test_transformers_long_tail(class_name, caplog):
    built = zoo.build_transformers(class_name)
    assert built is not None
    checked = _check_quietly(built, caplog)
    assert (checked.layer, checked.grid) == HF_SAMPLE[class_name]
    assert checked.source.startswith("transformers hidden_states")
    assert zoo.named_layer_agrees(built) == checked.layer  # issue 26: naming it must work too


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "mobilenet_v3_small", "swin_t"])
def test_torchvision_engine_and_command_line_agree(name, caplog):
    built = zoo.build_torchvision(name)
    checked = _check_quietly(built, caplog)
    assert checked.layer == prepare_network(name, RANDOM_WEIGHTS).layer


def test_coat_is_no_longer_refused_but_lands_a_scale_early():
    """A known gap. CoaT's parallel blocks return tuples, so no module returns timm's last
    feature map; of the norms that share its grid none changes like it when a corner of the
    image changes, so the default is the last parallel block's norm of the scale before
    (the library's next-to-last grid). It used to be a LayerNotFoundError."""
    built = zoo.build_timm("coat", "coat_tiny", (224, 224))
    default = choose_default_layer(built.model, torch.rand(1, 3, 224, 224))
    assert default.name.startswith("parallel_blocks.5.norm")
    assert default.layout.grid in ((7, 7), (14, 14))
    assert "forward_intermediates" in default.source


def test_coat_named_default_layer_at_a_non_square_input():
    """Issue 26: at 96x160 CoaT's default norm holds 61 tokens (1 + 6x10, or 7 + 6x9 by the
    count alone); naming that layer read it as timm does, not refused."""
    built = zoo.build_timm("coat", "coat_tiny", (96, 160))
    assert built is not None and built.size == (96, 160)
    assert zoo.named_layer_agrees(built).startswith("parallel_blocks.5.norm")


def test_a_layer_that_folds_the_batch_is_refused_by_name():
    """TNT's pixel embedding runs on B x 196 patches: its map is nobody's."""
    torch.manual_seed(0)
    model = timm.create_model("tnt_s_patch16_224", img_size=(64, 64), num_classes=5).eval()
    engine = CAMEngine(model, layer="pixel_embed.proj")
    with pytest.raises(ValueError, match=r"'pixel_embed.proj' outputs shape \(32, ") as info:
        engine.explain(torch.rand(2, 3, 64, 64))
    assert "first axis is not the batch" in str(info.value)
    assert "whole block or stage" in str(info.value)


def test_the_library_network_is_found_inside_a_wrapper():
    """A LightningModule or any wrapper holding the library's model gets the same default."""
    torch.manual_seed(0)
    net = timm.create_model("nest_tiny", num_classes=5).eval()
    wrapper = torch.nn.Sequential(torch.nn.Identity(), net)
    images = torch.rand(1, 3, 224, 224)
    assert choose_default_layer(wrapper, images).name == "1.levels.2"
    assert choose_default_layer(net, images).name == "levels.2"


# ---------------------------------------------------------------------------- sweeps


TIMM_GAPS = {family: why for (library, family), why in zoo.KNOWN_GAPS.items() if library == "timm"}

# Where the corner check says nothing: deep random networks whose change from either corner
# spreads alike over the whole grid ("spread" in docs/default-layers.md). The grid is still
# checked against the library's; a model that newly spreads fails.
SPREAD = {
    ("timm", m)
    for m in (
        "convmixer",
        "cpubone",
        "gemma4_vit",
        "inception_v3",
        "levit",
        "lowformer",
        "shvit",
        "tiny_vit",
        "visformer",
    )
} | {
    ("transformers", c)
    for c in (
        "EfficientNetForImageClassification",
        "LevitForImageClassification",
        "MobileViTV2ForImageClassification",
    )
}


def _assert_sweep(built: zoo.Built) -> None:
    """The default's grid is the library's own last feature grid, and its cells follow the
    image (``zoo.check``: a corner's change moves them most in that corner, or at least the
    two corners' changes are ordered the right way)."""
    assert built.reference_grid is not None, f"{built.name}: the library gave no feature grid"
    checked = zoo.check(built)
    assert checked.grid == built.reference_grid, (checked.layer, checked.grid)
    assert zoo.named_layer_agrees(built) == checked.layer  # the named default reads the same
    assert checked.grid[0] * checked.grid[1] > 1
    if (built.library, built.family) in SPREAD:
        assert checked.corners == -1, f"{built.family} no longer spreads: take it off SPREAD"
    else:
        assert checked.corners in (0, 1), (checked.layer, "the corner check told nothing")


@pytest.mark.slow
@pytest.mark.parametrize(
    "module",
    [
        pytest.param(m, marks=pytest.mark.xfail(reason=TIMM_GAPS[m], strict=True))
        if m in TIMM_GAPS
        else m
        for m in sorted(timm.list_modules())
    ],
)
def test_sweep_timm(module):
    built = zoo.build_timm(module)
    if built is None:
        pytest.skip(f"no model of timm.models.{module} builds and runs here")
    _assert_sweep(built)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.torchvision_names())
def test_sweep_torchvision(name):
    # The reference grid comes from torchvision's own feature extraction (an FX trace).
    built = zoo.build_torchvision(name)
    if built is None:
        pytest.skip(f"{name} does not run at the sweep's input sizes")
    _assert_sweep(built)


@pytest.mark.slow
@pytest.mark.parametrize("class_name", zoo.transformers_classes())
def test_sweep_transformers(class_name):
    built = zoo.build_transformers(class_name)
    if built is None:
        pytest.skip(f"{class_name} cannot build or run here")
    _assert_sweep(built)


def test_choosing_the_default_leaves_no_trace():
    """Train-mode flags, BatchNorm statistics, .grad, hooks and the RNG stay as they were."""
    from tests.engine.nets import modules_with_hooks

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5).train()
    images = torch.rand(2, 3, 64, 96)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    default = choose_default_layer(model, images)
    assert default.name == "layer4" and default.layout.grid == (2, 3)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert modules_with_hooks(model) == []
    assert torch.equal(torch.get_rng_state(), rng)


def _table_rows() -> dict[str, tuple[str, tuple[int, int], str, tuple[int, int]]]:
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "default-layers.md"
    rows = {}
    for line in page.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[1].startswith("`"):
            size = tuple(int(v) for v in cells[2].split("x"))
            grid = tuple(int(v) for v in cells[4].split("x"))
            rows[cells[0]] = (cells[1].strip("`"), size, cells[3].strip("`"), grid)
    return rows


@pytest.mark.parametrize("module", ["resnet", "vision_transformer", "swin_transformer", "nest"])
def test_the_docs_table_says_what_the_code_does(module):
    """docs/default-layers.md is written by a slow sweep; a few of its rows, rerun here,
    catch a table left stale by a change of the default."""
    name, size, layer, grid = _table_rows()[module]
    built = zoo.build_timm(module, name, size)
    default = choose_default_layer(built.model, torch.rand(1, 3, *size))
    assert (default.name, default.layout.grid) == (layer, grid)
