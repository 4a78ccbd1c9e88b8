"""One model per architecture of timm, torchvision and transformers, built small and random,
and the checks every default layer must pass. Shared by the sweep tests and by
``docs/make_default_layers.py``, which writes ``docs/default-layers.md`` from it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lightning_gradcam.models.defaults import choose_default_layer
from lightning_gradcam.models.hf_meta import hf_references
from lightning_gradcam.models.timm_meta import timm_references

# The sweep's input: small, and not square, so a transposed grid cannot pass.
SIZE = (96, 160)
CLASSES = 5

# Name parts of small variants, smallest first (a model per module is picked by these,
# then by parameter count on the meta device).
_SMALL = ("atto", "femto", "pico", "nano", "micro", "tiny", "xxs", "xs", "mini", "small", "s")


@dataclass
class Built:
    library: str
    family: str  # timm module, torchvision builder, transformers class
    name: str
    model: nn.Module
    size: tuple[int, int]
    reference_grid: tuple[int, int] | None  # the library's own last feature grid


def _size_rank(name: str) -> tuple[int, int]:
    parts = re.split(r"[_\-.]", name)
    rank = min((i for i, word in enumerate(_SMALL) if word in parts), default=len(_SMALL))
    return rank, len(name)


def smallest_timm_model(module: str, candidates: int = 4) -> str | None:
    """The smallest model of timm module ``module``: the first few by name, then by their
    parameter count (built on the meta device, no weights)."""
    import timm

    names = sorted(timm.list_models(module=module), key=_size_rank)[:candidates]
    sized = []
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            sized.append((sum(p.numel() for p in model.parameters()), name))
        except Exception:  # noqa: BLE001 - a model that cannot build is skipped
            continue
    return min(sized)[1] if sized else None


def wake_up(model: nn.Module) -> nn.Module:
    """Undo zero initialisations that make a random network degenerate: timm zero-inits the
    last norm of each residual block (the net is then its shortcuts, strided 1x1
    convolutions that see one pixel in four) and some heads and layer scales. Norm weights
    and scales that are all zero become ones, all-zero weight matrices small noise."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or not param.is_floating_point() or param.numel() == 0:
                continue
            if float(param.abs().max()) > 1e-5:
                continue
            if param.dim() <= 1:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


def _runs(model: nn.Module, size: tuple[int, int]) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
        return True
    except Exception:  # noqa: BLE001 - any failure: try another input size
        return False


def _last_spatial_grid(references: list[torch.Tensor]) -> tuple[int, int] | None:
    """The grid of the library's last feature map with more than one cell (timm's VGG ends
    in a ``pre_logits`` convolution with a 1x1 output at small inputs)."""
    grids = [tuple(r.shape[-2:]) for r in references if r.shape[-2] * r.shape[-1] > 1]
    return grids[0] if grids else None


def build_timm(module: str, name: str | None = None, size: tuple[int, int] = SIZE) -> Built | None:
    """The smallest model of a timm module at ``SIZE`` (``img_size=`` where the model takes
    it), else at its own input size; ``None`` when it cannot build or run."""
    import timm

    name = name or smallest_timm_model(module)
    if name is None:
        return None
    torch.manual_seed(0)
    tries: list[tuple[dict, tuple[int, int]]] = [({"img_size": size}, size), ({}, size)]
    for kwargs, size in tries:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)
        except Exception:  # noqa: BLE001
            continue
        wake_up(model).eval()
        own = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        for s in (size, own):
            if _runs(model, s):
                refs = timm_references(model, torch.zeros(1, 3, *s))
                grid = _last_spatial_grid(refs)
                return Built("timm", module, name, model, s, grid)
    return None


def torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def torchvision_reference_grid(model: nn.Module, size: tuple[int, int]) -> tuple[int, int] | None:
    """The last feature grid by torchvision's own feature extraction (an FX trace of every
    node): the grid of the last 4-D node that is not a pooling (VGG's adaptive pooling
    re-grids its 3x5 features to 7x7; its last max-pool halves them) and has more than one
    cell whichever axes are read as the grid (ConvNeXt's head norms a channels-last
    ``(1, 1, 1, C)``)."""
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    _, nodes = get_graph_node_names(model)
    modules = dict(model.named_modules())
    kept = [
        n
        for n in nodes
        if "pool" not in n.rsplit(".", 1)[-1] and not isinstance(modules.get(n), _POOLS)
    ]
    with torch.no_grad():
        outputs = create_feature_extractor(model, return_nodes=kept)(torch.zeros(1, 3, *size))
    grids = [
        tuple(t.shape[-2:])
        for t in outputs.values()
        if isinstance(t, torch.Tensor)
        and t.dim() == 4
        and t.shape[-2] * t.shape[-1] > 1
        and t.shape[1] * t.shape[2] > 1
    ]
    return grids[-1] if grids else None


def build_torchvision(name: str) -> Built | None:
    import torchvision

    torch.manual_seed(0)
    kwargs = {"init_weights": False} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=CLASSES, **kwargs)
    wake_up(model).eval()
    for size in (SIZE, (224, 224), (299, 299)):
        if _runs(model, size):
            grid = torchvision_reference_grid(model, size)
            return Built("torchvision", type(model).__name__, name, model, size, grid)
    return None


# Known gaps of the default layer, each explained in a test of tests/models.
KNOWN_GAPS = {
    ("timm", "coat"): "parallel blocks return tuples, so no module returns the last feature map;"
    " the default is the last parallel block's norm of the scale before (next-to-last grid)",
}

# Not pixel classifiers (token ids), or needing a package that is not installed.
HF_SKIP = {
    "ImageGPTForImageClassification": "reads token ids, not pixels",
    "ShieldGemma2ForImageClassification": "a vision-language model over token ids",
    "DinatForImageClassification": "needs the natten package",
    "TimmWrapperForImageClassification": "a timm model (covered by the timm sweep)",
    "PPLCNetForImageClassification": "its output holds no logits here (last_hidden_state only)",
}


def transformers_classes() -> list[str]:
    import transformers

    return sorted(
        n
        for n in dir(transformers)
        if n.endswith("ForImageClassification") and n != "AutoModelForImageClassification"
    )


def _hf_config(cls, size: tuple[int, int] | None):
    config = cls.config_class()
    vision = getattr(config, "vision_config", None)
    target = vision if vision is not None else config
    if size is not None and isinstance(getattr(target, "image_size", None), int):
        target.image_size = size[0] if size[0] == size[1] else list(size)
    fields = vars(target)
    if isinstance(fields.get("num_hidden_layers"), int) and not any(
        k in fields for k in ("depths", "hidden_sizes", "depth")
    ):
        target.num_hidden_layers = min(target.num_hidden_layers, 3)
    config.num_labels = CLASSES
    return config


def build_transformers(class_name: str) -> Built | None:
    import transformers

    if class_name in HF_SKIP:
        return None
    cls = getattr(transformers, class_name)
    for size, setting in ((SIZE, SIZE), ((96, 96), (96, 96)), ((224, 224), None)):
        torch.manual_seed(0)
        try:
            model = wake_up(cls(_hf_config(cls, setting))).eval()
        except Exception:  # noqa: BLE001
            continue
        if _runs(model, size):
            refs = hf_references(model, torch.zeros(1, 3, *size))
            grid = _last_spatial_grid(refs)
            return Built("transformers", class_name, class_name, model, size, grid)
    return None


@dataclass
class Checked:
    built: Built
    layer: str
    grid: tuple[int, int]
    kind: str
    prefix: int
    source: str
    seconds: float
    # 1: the top-left change peaked in the grid's top-left quarter too; 0: only the
    # difference of the two corners points the right way; -1: neither tells anything.
    corners: int


def _change(
    model: nn.Module, layer: str, layout, images: torch.Tensor, corner: str
) -> torch.Tensor:
    """``(h, w)``: how much each cell of the layer's map moves when one quarter-by-quarter
    corner of the image is brightened (squared change, summed over channels)."""
    from lightning_gradcam.core.layers import resolve_layer

    module = resolve_layer(model, layer)
    outs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, o: outs.append(o.detach().clone()))
    moved = images.clone()
    h, w = images.shape[-2:]
    rows = slice(0, h // 4) if corner[0] == "t" else slice(h - h // 4, h)
    cols = slice(0, w // 4) if corner[1] == "l" else slice(w - w // 4, w)
    moved[..., rows, cols] += 3.0
    try:
        with torch.no_grad():
            model(images)
            model(moved)
    finally:
        handle.remove()
    return (layout.to_bchw(outs[1]) - layout.to_bchw(outs[0])).double().pow(2).sum(1)[0]


def _centre(change: torch.Tensor) -> tuple[float, float]:
    """The change's centre of mass, in cells."""
    rows = torch.arange(change.shape[0], dtype=change.dtype)[:, None]
    cols = torch.arange(change.shape[1], dtype=change.dtype)[None, :]
    total = change.sum().clamp_min(1e-300)
    return float((change * rows).sum() / total), float((change * cols).sum() / total)


def check(built: Built, clock: Callable[[], float] = time.perf_counter) -> Checked:
    """The default layer of ``built``, checked: its grid is the library's own last grid
    (timm, transformers), more than one cell, and its cells follow the image: brightening
    the top-left corner moves its activations most in the top-left of the grid, and
    (compared with brightening the bottom-right corner) further up and further left.

    The second form is what holds for every network: in a deep random one, whose effective
    receptive field covers the image, any change moves the central cells most (more paths
    reach them), but the difference between two corners still points the right way, and a
    transposed, striped or shuffled reading of the tokens would not."""
    start = clock()
    model = built.model
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, *built.size, generator=generator)
    default = choose_default_layer(model, images)
    layout = default.layout
    assert layout.grid is not None and layout.grid[0] * layout.grid[1] > 1, layout
    if built.reference_grid is not None:
        assert layout.grid == built.reference_grid, (default.name, layout, built.reference_grid)
    gh, gw = layout.grid
    top_left = _change(model, default.name, layout, images, "tl")
    bottom_right = _change(model, default.name, layout, images, "br")
    corners = 0
    if float(top_left.max()) > 1.1 * float(top_left.median()):  # not the same everywhere
        i, j = divmod(int(top_left.flatten().argmax()), gw)
        if (i + 0.5) / gh <= 0.5 and (j + 0.5) / gw <= 0.5:
            corners = 1  # the top-left cell moved most: the strong form holds
    (tl_row, tl_col), (br_row, br_col) = _centre(top_left), _centre(bottom_right)
    # An axis along which both changes centre within 2% of the grid tells nothing (the
    # change spread over the whole grid); along any other, top-left must come first.
    told = 0
    for axis, first, second, extent in (
        ("rows", tl_row, br_row, gh),
        ("columns", tl_col, br_col, gw),
    ):
        if extent > 1 and abs(first - second) >= 0.02 * extent:
            assert first < second, (default.name, axis, first, second, layout.grid)
            told += 1
    if not told:
        corners = -1  # both changes spread alike over the grid: nothing to tell
    return Checked(
        built,
        default.name,
        layout.grid,
        layout.kind,
        layout.prefix,
        default.source,
        clock() - start,
        corners,
    )


def named_layer_agrees(built: Built) -> str:
    """Naming the default's own layer gives the very maps ``layer=None`` gives, at the
    zoo's (non-square where the model takes it) input: the named layer is read through the
    library's layout too, not refused or re-guessed. Returns the layer."""
    from lightning_gradcam import CAMEngine

    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, *built.size, generator=generator)
    default = CAMEngine(built.model, methods=("gradcam", "hirescam")).explain(images)
    named = CAMEngine(built.model, layer=default.layer, methods=("gradcam", "hirescam"))
    result = named.explain(images)
    assert (result.layout.kind, result.layout.grid, result.layout.prefix) == (
        default.layout.kind,
        default.layout.grid,
        default.layout.prefix,
    ), (default.layer, str(result.layout), str(default.layout))
    for method, maps in default.maps.items():
        assert torch.equal(result.layer_maps[method], default.layer_maps[method]), method
        assert torch.equal(result.maps[method], maps), method
    return default.layer
