"""torchvision classification networks for the command line: names, default layers, weights.

Weights come from one of three places, each checked before any image is explained:

- a state-dict file (``torch.load(..., weights_only=True)``: a file that would run code when
  unpickled is refused). Checkpoints wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``
  and keys prefixed ``module.`` (DataParallel) are accepted, as are the old model-zoo keys of
  densenet (``denselayer1.norm.1.weight`` for ``norm1.weight``). A head with another number of
  classes than 1000 is read from the file;
- torchvision's pretrained weights (``None``), from the torch hub cache or downloaded;
- ``"random"``: random initialisation (maps are then meaningless).

Models are first built on the ``meta`` device, which costs no memory and no initialisation:
the state dict is checked against it (every key and shape) and a meta forward checks the
input size, the layer and the class id, so a bad argument stops the command before it writes
anything. Nothing here knows about argparse: errors are exceptions with one-line messages.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF
from torch import nn

from ..core.checkpoints import RANDOM_WEIGHTS, WeightsError, download_file, load_state_dict_file
from ..core.command_line import first_line
from ..core.layers import resolve_layer
from .torchvision_meta import family_layers

__all__ = [
    "SEED_NETWORKS",
    "RANDOM_WEIGHTS",
    "NetworkError",
    "WeightsError",
    "DownloadError",
    "Preprocess",
    "NetworkSpec",
    "available_networks",
    "check_network_name",
    "default_layer",
    "load_state_dict_file",
    "rename_legacy_keys",
    "pretrained_cache_path",
    "fetch_pretrained",
    "prepare_network",
    "materialize",
]

#: The networks of the original Grad-CAM.pytorch, each with a hand-picked default layer.
SEED_NETWORKS: tuple[str, ...] = (
    "vgg16",
    "vgg19",
    "resnet50",
    "resnet101",
    "densenet121",
    "inception_v3",
    "mobilenet_v2",
    "shufflenet_v2_x1_0",
)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# Builders that take auxiliary classifiers: the state dict says whether they are present.
_AUX_PREFIXES = {"inception_v3": "AuxLogits.", "googlenet": ("aux1.", "aux2.")}

# Old torchvision densenet checkpoints named `norm1` as `norm.1` (dots in module names were
# allowed then); torchvision's pretrained densenet files still hold those keys.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)


class NetworkError(ValueError):
    """An unknown network name."""


class DownloadError(WeightsError):
    """torchvision's pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class Preprocess:
    """torchvision's ``ImageClassification`` preset: resize the shorter side to
    ``resize_size``, centre-crop ``crop_size`` square, then ``(x - mean) / std``."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = _IMAGENET_MEAN
    std: tuple[float, ...] = _IMAGENET_STD

    def with_input_size(self, size: int | None) -> Preprocess:
        """The same preset for a ``size x size`` network input (resize scaled alike)."""
        if size is None:
            return self
        resize = max(size, round(size * self.resize_size / self.crop_size))
        return Preprocess(size, resize, self.mean, self.std)

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 (H, W, 3)`` RGB to ``(view, x)``: ``view (3, S, S)`` in [0, 1] is what the
        network sees, resized and cropped (pictures are drawn on it); ``x`` is ``view``
        normalised, the network's input."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        pixels = TF.resize(pixels, self.resize_size, antialias=True)
        view = TF.center_crop(pixels, [self.crop_size, self.crop_size]).clamp(0, 1)
        return view, TF.normalize(view, list(self.mean), list(self.std))


@dataclass
class NetworkSpec:
    """A network checked on the meta device, ready to be materialised.

    Attributes:
        name: torchvision builder name.
        layer: dotted layer name to explain (``None``: ``CAMEngine`` picks the last 4-D layer).
        num_classes: the head's number of outputs.
        categories: class names when the head has torchvision's ImageNet classes, else ``None``.
        preprocess: how images are resized, cropped and normalised for this network.
        source: where the weights come from, for the user (a path, ``"random"``, ...).
        build_kwargs: keyword arguments for ``torchvision.models.get_model``.
        state_dict: the checked state dict, or ``None`` for random weights.
    """

    name: str
    layer: str | None
    num_classes: int
    categories: list[str] | None
    preprocess: Preprocess
    source: str
    build_kwargs: dict = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] | None = None

    @property
    def random(self) -> bool:
        return self.state_dict is None

    def class_name(self, class_id: int) -> str:
        """``"281 tabby"`` with ImageNet names, else ``"281"``."""
        if self.categories is not None and 0 <= class_id < len(self.categories):
            return f"{class_id} {self.categories[class_id]}"
        return str(class_id)


def available_networks() -> list[str]:
    """Every torchvision classification builder name (``torchvision.models.list_models``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_network_name(name: str) -> str:
    """Return ``name`` if torchvision builds a classifier by that name, else raise
    ``NetworkError`` naming the closest names."""
    names = available_networks()
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise NetworkError(
        f"unknown network {name!r}: {hint}choose a torchvision classification model, e.g. "
        f"{', '.join(SEED_NETWORKS)} (all: torchvision.models.list_models())"
    )


def default_layer(name: str, model: nn.Module) -> str | None:
    """The layer ``layer=None`` explains in torchvision network ``name``: the first of
    :func:`lightning_gradcam.models.torchvision_meta.family_layers`, the same table the
    engine and the callback use (works on the meta device); ``None`` (the engine's choice)
    for a family the table does not hold.

    - resnet, resnext, wide_resnet: ``layer4``; densenet: ``features`` (after ``norm5``);
      inception_v3: ``Mixed_7c``; mobilenet_v2/v3: ``features``; shufflenet_v2: ``conv5``;
    - vgg: the last ReLU of ``features`` (``features.29`` in vgg16, ``features.35`` in vgg19),
      the rectified output of the last convolution before the final max-pool, at twice the
      resolution of the pooled map (14x14 for a 224 input). The seed hooked the last
      convolution itself; its output is rewritten in place by that ReLU;
    - vit: the next-to-last encoder block, ``encoder.layers.encoder_layer_10`` (tokens
      ``(B, 1 + h*w, C)``; the last block's patch tokens get no gradient from the
      class-token head); swin: the last stage, ``features.7`` (``(B, h, w, C)``);
      convnext, efficientnet: ``features``; maxvit: the last stage, ``blocks.3``.
    """
    del name  # the family is the builder's class
    layers = family_layers(model)
    return layers[0] if layers else None


def _weights_enum(name: str):
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None


def _preprocess_for(name: str) -> Preprocess:
    weights = _weights_enum(name)
    if weights is None:
        return Preprocess()
    preset = weights.transforms()
    try:
        return Preprocess(
            int(preset.crop_size[0]),
            int(preset.resize_size[0]),
            tuple(float(v) for v in preset.mean),
            tuple(float(v) for v in preset.std),
        )
    except (AttributeError, IndexError, TypeError):  # a preset of another shape
        return Preprocess()


def _categories_for(name: str, num_classes: int) -> list[str] | None:
    weights = _weights_enum(name)
    categories = list(weights.meta.get("categories") or []) if weights is not None else []
    return categories if len(categories) == num_classes else None


def rename_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old densenet zoo keys (``denselayer1.norm.1.weight``) to current ones
    (``denselayer1.norm1.weight``); other keys unchanged."""
    renamed = {}
    for key, value in state_dict.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def _load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``load_state_dict_file`` with the old densenet zoo keys renamed."""
    return rename_legacy_keys(load_state_dict_file(path))


def pretrained_cache_path(name: str) -> Path:
    """Where torch hub keeps (or would keep) torchvision's default weights for ``name``."""
    weights = _weights_enum(name)
    if weights is None:
        raise DownloadError(f"torchvision has no pretrained weights for {name}")
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def fetch_pretrained(name: str, timeout: float = 20.0) -> Path:
    """The cached pretrained weights file of ``name``, downloading it if needed.

    Any failure to download (no network, a proxy, a timeout of ``timeout`` seconds without
    data) raises ``DownloadError`` at once, naming the URL and the cache path.
    """
    path = pretrained_cache_path(name)
    if path.is_file():
        return path
    url = _weights_enum(name).url
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        download_file(url, path, timeout, hash_prefix=match.group(1) if match else None)
    except Exception as exc:  # any download failure means "cannot download"
        raise DownloadError(
            f"cannot download the pretrained {name} weights from {url} ({first_line(exc)}); "
            f"the cache file {path} does not exist"
        ) from None
    return path


def _build_kwargs(name: str, state_dict: Mapping[str, torch.Tensor] | None) -> dict:
    kwargs: dict = {}
    if name in ("inception_v3", "googlenet"):
        # torchvision's pretrained weights expect ImageNet-normalised input, which the model
        # converts to its own normalisation (transform_input); random init needs no init cost
        # when weights will be loaded anyway.
        kwargs["transform_input"] = True
        kwargs["init_weights"] = state_dict is None
        if state_dict is not None:
            prefixes = _AUX_PREFIXES[name]
            kwargs["aux_logits"] = any(k.startswith(prefixes) for k in state_dict)
    return kwargs


def _build(name: str, kwargs: dict, device: str | torch.device) -> nn.Module:
    with torch.device(device):
        return torchvision.models.get_model(name, **kwargs)


def _head_key(expected: Mapping[str, torch.Tensor]) -> str | None:
    """The classifier's weight: the last weight of two or more dims in the state dict."""
    keys = [k for k, v in expected.items() if k.endswith("weight") and v.dim() >= 2]
    return keys[-1] if keys else None


def _fmt_shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _check_fits(
    name: str, source: str, expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> None:
    """Raise ``WeightsError`` unless ``given`` has exactly the keys and shapes of
    ``expected`` (BatchNorm's ``num_batches_tracked`` may be missing, as in old files)."""
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of the {len(expected)} tensors of {name} are missing "
            f"(e.g. {missing[0]!r})"
        )
    if unexpected:
        problems.append(f"{len(unexpected)} unknown to {name} (e.g. {unexpected[0]!r})")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} with another shape (e.g. {k!r} is {_fmt_shape(given[k])}, "
            f"{name} has {_fmt_shape(expected[k])})"
        )
    raise WeightsError(
        f"the state dict in {source} does not fit {name}: {'; '.join(problems)}; it is "
        "probably for another network: pass the --network it was saved from"
    )


def _meta_model(name: str, state_dict: Mapping[str, torch.Tensor] | None, source: str):
    kwargs = _build_kwargs(name, state_dict)
    model = _build(name, kwargs, "meta")
    if state_dict is not None:
        expected = model.state_dict()
        head = _head_key(expected)
        if (
            head is not None
            and head in state_dict
            and state_dict[head].dim() == expected[head].dim()
            and state_dict[head].shape[1:] == expected[head].shape[1:]
            and state_dict[head].shape[0] != expected[head].shape[0]
        ):  # a head trained for another number of classes
            kwargs["num_classes"] = int(state_dict[head].shape[0])
            model = _build(name, kwargs, "meta")
            expected = model.state_dict()
        _check_fits(name, source, expected, state_dict)
    return model.eval(), kwargs


def _probe(
    model: nn.Module, name: str, layer: str | None, input_size: int
) -> tuple[int, tuple[int, ...] | None]:
    """A forward on the meta device: the number of classes, and the layer's output shape."""
    shapes: list[tuple[int, ...]] = []
    handle = None
    if layer is not None:
        handle = resolve_layer(model, layer).register_forward_hook(
            lambda _m, _i, out: shapes.append(
                tuple(out.shape) if isinstance(out, torch.Tensor) else ()
            )
        )
    try:
        with torch.no_grad():
            output = model(torch.empty(1, 3, input_size, input_size, device="meta"))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ValueError(
            f"{name} cannot run on a {input_size}x{input_size} input ({first_line(exc)}); "
            "choose a larger input size"
        ) from None
    finally:
        if handle is not None:
            handle.remove()
    if isinstance(output, Sequence) and not isinstance(output, torch.Tensor):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise ValueError(f"{name} does not return class scores (B, num_classes)")
    if layer is None:
        return int(output.shape[1]), None
    if len(shapes) != 1 or len(shapes[0]) not in (3, 4):  # tokens, or (B,C,h,w)/(B,h,w,C)
        how = f"ran {len(shapes)} times" if len(shapes) != 1 else f"outputs shape {shapes[0]}"
        raise ValueError(
            f"layer {layer!r} of {name} {how}; Grad-CAM needs a layer that runs once and "
            "outputs a (B, C, h, w) or (B, h, w, C) feature map, or tokens (B, P + h*w, C)"
        )
    return int(output.shape[1]), shapes[0]


def prepare_network(
    name: str,
    weight_path: str | os.PathLike | None = None,
    layer: str | None = None,
    input_size: int | None = None,
    class_id: int | None = None,
    download_timeout: float = 20.0,
) -> NetworkSpec:
    """Check everything about a network before it is built for real.

    Args:
        name: a torchvision classification builder name.
        weight_path: a state-dict file, ``None`` for torchvision's pretrained weights (from
            the hub cache, else downloaded), or ``"random"``.
        layer: the layer to explain; ``None`` for ``default_layer``.
        input_size: side of the square network input; ``None`` for the weights' preset
            (224, or 299 for inception_v3).
        class_id: the class to explain, checked against the head.

    Raises:
        NetworkError, WeightsError (``DownloadError``), LayerNotFoundError, ValueError: each
        with a one-line message saying what to change.
    """
    check_network_name(name)
    if weight_path is None:
        path = fetch_pretrained(name, download_timeout)
        state_dict, source = _load_state_dict(path), f"torchvision pretrained ({path})"
    elif str(weight_path) == RANDOM_WEIGHTS:
        state_dict, source = None, "random initialisation"
    else:
        state_dict, source = _load_state_dict(weight_path), str(weight_path)
    meta, kwargs = _meta_model(name, state_dict, source)
    if layer is None:
        layer = default_layer(name, meta)
    preprocess = _preprocess_for(name).with_input_size(input_size)
    num_classes, _ = _probe(meta, name, layer, preprocess.crop_size)
    if class_id is not None and not 0 <= class_id < num_classes:
        raise ValueError(
            f"class id {class_id} is outside the {num_classes} classes of {name}'s head "
            f"(valid: 0..{num_classes - 1})"
        )
    return NetworkSpec(
        name=name,
        layer=layer,
        num_classes=num_classes,
        categories=_categories_for(name, num_classes),
        preprocess=preprocess,
        source=source,
        build_kwargs=kwargs,
        state_dict=state_dict,
    )


def materialize(spec: NetworkSpec, device: str | torch.device = "cpu") -> nn.Module:
    """Build the network of ``spec`` in eval mode on ``device``.

    With a state dict the model is built on the meta device and the (float32) tensors are
    assigned, so large networks skip their random initialisation.
    """
    if spec.state_dict is None:
        return _build(spec.name, spec.build_kwargs, "cpu").eval().to(device)
    model = _build(spec.name, spec.build_kwargs, "meta")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in spec.state_dict.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # state the file does not hold (non-persistent buffers): build for real
        model = _build(spec.name, spec.build_kwargs, "cpu")
        model.load_state_dict(tensors, strict=False)
    return model.eval().to(device)
