"""The detector of a loaded config, on a device this machine has, with its class names and
the layers asked for: what ``detectron2-gradcam`` builds before it explains anything.

Example::

    cfg = load_config("common/models/retinanet.py", ["train.init_checkpoint=random"])
    note = use_device(cfg, requested="auto")     # the config's device; the CPU if no CUDA
    model = build_detector(cfg, "common/models/retinanet.py")
    single, strip = expand_layers(model, ["head.cls_subnet.*"])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import CfgNode

from lightning_gradcam.core.command_line import AUTO_DEVICE, first_line, resolve_device
from lightning_gradcam.core.layers import expand_layer_names, is_layer_pattern

from .loading import ConfigError, lazy_config

__all__ = [
    "build_detector",
    "check_input_format",
    "class_names",
    "detector_name",
    "expand_layers",
    "num_classes",
    "use_device",
]

#: How a user of the command chooses a layer, for the "no such layer" message.
LAYER_HINT = (
    "or leave out --layer-name for the detector's default (roi_heads.res5 for C4, "
    "roi_heads.box_pooler for FPN, head.cls_subnet.7 for RetinaNet)"
)


def check_input_format(cfg: CfgNode) -> str:
    """``cfg.INPUT.FORMAT``, which must be BGR or RGB (what images are converted to).

    Raises:
        ConfigError: any other format.
    """
    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        raise ConfigError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: only BGR and RGB are supported")
    return str(cfg.INPUT.FORMAT)


def use_device(cfg: CfgNode, requested: str = AUTO_DEVICE, opts: Sequence[str] = ()) -> str | None:
    """Set ``cfg.MODEL.DEVICE`` to the device the detector runs on; return a note when a
    CUDA device of the config falls back to the CPU, else ``None``.

    ``requested`` (``--device``) other than ``auto`` replaces the config's device and must
    exist here. With ``auto``, the config's device is used (``MODEL.DEVICE`` for YAML,
    ``train.device`` for a LazyConfig): when it is CUDA and this machine has none, a device
    set in ``opts`` is an error, as an explicit ``--device`` is, and one from the file (or
    detectron2's default ``cuda``) runs on the CPU with the note. Messages name the key as
    the config spells it.

    Raises:
        lightning_gradcam.core.command_line.DeviceError: a device that is not usable here.
    """
    lazy = lazy_config(cfg) is not None
    key = "train.device" if lazy else "MODEL.DEVICE"
    if requested != AUTO_DEVICE:
        device = resolve_device(requested)
        _set_device(cfg, str(device))
        return None
    text = str(cfg.MODEL.DEVICE)
    given = (
        any(str(opt).split("=", 1)[0] == key for opt in opts) if lazy else key in list(opts)[::2]
    )
    wants_cuda = text.split(":", 1)[0] == "cuda"
    if given or not wants_cuda or torch.cuda.is_available():
        opts_fix = f"--opts {key}=cpu" if lazy else f"--opts {key} cpu"
        resolve_device(text, source=f"{key} {text}", fix=f"use --device cpu or {opts_fix}")
        return None
    _set_device(cfg, "cpu")
    return f"the config asks for {key} {text}, which is not available: running on the CPU"


def _set_device(cfg: CfgNode, device: str) -> None:
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    if frozen:
        cfg.freeze()


def build_detector(cfg: CfgNode, config_file: str) -> torch.nn.Module:
    """The detector in eval mode: ``build_model(cfg)``, or ``instantiate`` of the LazyConfig's
    model (moved to ``cfg.MODEL.DEVICE``); its random initialisation seeded (0) without
    touching the caller's RNG, so ``random`` weights give the same model every time.

    Raises:
        ConfigError: detectron2 cannot build it.
    """
    from detectron2.modeling import build_model

    lazy = lazy_config(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            if lazy is None:
                model = build_model(cfg)
            else:
                from detectron2.config import instantiate

                model = instantiate(lazy.model).to(torch.device(cfg.MODEL.DEVICE))
        except Exception as exc:  # detectron2 asserts on many inconsistent configs
            raise ConfigError(
                f"cannot build the detector of {config_file} ({type(exc).__name__}: "
                f"{first_line(exc)}); check the config and --opts"
            ) from None
    return model.eval()


def detector_name(cfg: CfgNode) -> str:
    """``GeneralizedRCNN with CAMRes5ROIHeads``, ``CAMRetinaNet``, ...: what is explained."""
    arch = cfg.MODEL.META_ARCHITECTURE
    return f"{arch} with {cfg.MODEL.ROI_HEADS.NAME}" if arch == "GeneralizedRCNN" else arch


def num_classes(cfg: CfgNode) -> int:
    """The detector's number of foreground classes."""
    if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE:
        return int(cfg.MODEL.RETINANET.NUM_CLASSES)
    return int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def class_names(cfg: CfgNode) -> list[str]:
    """``thing_classes`` of ``cfg.DATASETS.TEST[0]`` in ``MetadataCatalog`` when it has one
    name per class (COCO's for the model-zoo configs), else ``"class N"``."""
    count = num_classes(cfg)
    if cfg.DATASETS.TEST:
        import detectron2.data  # noqa: F401  (registers the builtin datasets' metadata)
        from detectron2.data import MetadataCatalog

        names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None)
        if names is not None and len(names) == count:
            return [str(n) for n in names]
    return [f"class {i}" for i in range(count)]


def expand_layers(
    model: torch.nn.Module, names: Sequence[str], hint: str = LAYER_HINT
) -> tuple[list[str], list[str]]:
    """Layer names to ``(single, strip)`` layer lists: a glob such as ``head.cls_subnet.*``
    gives strip layers (``head.cls_subnet.0`` ... ``.7``, expanded by
    ``core.layers.expand_layer_names``, as the hook does), one strip per detection; other
    names are single layers. ``hint`` ends the message of a name that is not found.

    Raises:
        LayerNotFoundError: an unknown name, or a glob that matches no layer (closest names
            in the message).
    """
    single: list[str] = []
    strip: list[str] = []
    for name in names:
        found = expand_layer_names(model, [name], hint)
        (strip if is_layer_pattern(name) else single).extend(found)
    return list(dict.fromkeys(single)), list(dict.fromkeys(strip))
