"""torchvision's classifiers: the last feature map of each family, by its builder's class.

torchvision has no feature metadata on its classifiers, but its families are few and fixed;
this table is the library's own layout written down once, for the engine, the callback and
the command line alike.
"""

from __future__ import annotations

from torch import nn

__all__ = ["family_layers", "is_torchvision_classifier"]


def is_torchvision_classifier(model: nn.Module) -> bool:
    """Whether ``model`` is one of torchvision's classification networks (by its class)."""
    return type(model).__module__.startswith("torchvision.models") and (
        type(model).__name__ in _FAMILIES
    )


def _last_relu(features: nn.Module) -> str:
    relus = [i for i, m in enumerate(features) if isinstance(m, nn.ReLU)]
    return f"features.{relus[-1]}"


def _last_index(name: str):
    return lambda m: [f"{name}.{len(getattr(m, name)) - 1}"]


def _vit(m: nn.Module) -> list[str]:
    # The class-token head reads only the class token of the last block's output: its patch
    # tokens get no gradient. The block before feeds the last block's attention.
    count = len(m.encoder.layers)
    return [f"encoder.layers.encoder_layer_{i}" for i in (count - 2, count - 1) if i >= 0]


# class name -> the layers to try, best first (names relative to the classifier).
_FAMILIES = {
    "ResNet": lambda m: ["layer4"],
    # vgg, alexnet: the rectified output of the last convolution before the final max-pool,
    # twice the pooled map's resolution (14x14 at 224); the convolution's own output is
    # rewritten in place by that ReLU.
    "VGG": lambda m: [_last_relu(m.features)],
    "AlexNet": lambda m: [_last_relu(m.features)],
    "DenseNet": lambda m: ["features"],
    "Inception3": lambda m: ["Mixed_7c"],
    "GoogLeNet": lambda m: ["inception5b"],
    "MobileNetV2": lambda m: ["features"],
    "MobileNetV3": lambda m: ["features"],
    "MNASNet": lambda m: ["layers"],
    "ShuffleNetV2": lambda m: ["conv5"],
    "SqueezeNet": lambda m: ["features"],
    "RegNet": lambda m: ["trunk_output"],
    "EfficientNet": lambda m: ["features"],
    "ConvNeXt": lambda m: ["features"],
    "SwinTransformer": _last_index("features"),  # (B, h, w, C)
    "MaxVit": _last_index("blocks"),
    "VisionTransformer": _vit,  # tokens (B, 1 + h*w, C)
}


def family_layers(model: nn.Module) -> list[str]:
    """The layers to explain in torchvision classifier ``model``, best first (``[]`` for a
    model of another library or family). Works on the meta device: names only."""
    rule = _FAMILIES.get(type(model).__name__)
    if rule is None or not type(model).__module__.startswith("torchvision.models"):
        return []
    return rule(model)
