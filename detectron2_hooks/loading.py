"""Config files as ``detectron2-gradcam`` reads them: a path or a model-zoo name, YAML or
LazyConfig, with ``KEY VALUE`` / ``key=value`` overrides, switched to the CAM adapters.

Both kinds end as one ``CfgNode`` carrying the few keys the command reads (for a LazyConfig
the node also carries the LazyConfig itself, for :func:`detectron2_hooks.building.build_detector`)::

    cfg = load_config("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
                      ["MODEL.WEIGHTS", "model_final_721ade.pkl", "MODEL.DEVICE", "cpu"])
    cfg = load_config("common/models/retinanet.py",
                      ["train.init_checkpoint=model.pkl", "model.num_classes=5"])
"""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode, get_cfg

from lightning_gradcam.core.checkpoints import RANDOM_WEIGHTS
from lightning_gradcam.core.command_line import first_line

from .config import add_gradcam_config, lazy_target, to_cam_config
from .weights import quiet_loggers

__all__ = ["ConfigError", "config_path", "load_config", "lazy_config", "zoo_names"]


class ConfigError(ValueError):
    """A config file or ``--opts`` that detectron2 cannot use."""


#: Where :func:`lazy_config` finds the LazyConfig behind a ``CfgNode`` made by
#: ``_describe_lazy`` (in the node's ``__dict__``, beside yacs's own flags, so it is no config
#: key).
_LAZY = "_lazy_config"


def lazy_config(cfg: CfgNode) -> Any | None:
    """The LazyConfig a ``CfgNode`` of :func:`load_config` describes; ``None`` for a YAML one."""
    return cfg.__dict__.get(_LAZY)


def _zoo_root() -> Path:
    """The model-zoo configs shipped inside detectron2 (``model_zoo.get_config_file``'s
    folder, found without ``pkg_resources``)."""
    import detectron2

    return Path(detectron2.__file__).parent / "model_zoo" / "configs"


def zoo_names() -> list[str]:
    """Every model-zoo config name (YAML and LazyConfig ``.py``), relative to the zoo's folder."""
    root = _zoo_root()
    found = [p for p in root.rglob("*") if p.suffix in (".yaml", ".py") and p.stem != "__init__"]
    return sorted(str(p.relative_to(root)) for p in found if "__pycache__" not in p.parts)


def config_path(name: str) -> str:
    """A config path for ``--config-file``: the file itself, else a model-zoo config name
    (YAML, or LazyConfig ``.py`` such as ``common/models/retinanet.py``).

    Raises:
        ConfigError: neither; the message names close model-zoo names.
    """
    if os.path.isfile(name):
        return name
    zoo = zoo_names()
    if name not in zoo:
        close = difflib.get_close_matches(name, zoo, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"config file {name} does not exist and is not a model-zoo config; {hint}give a "
            "YAML or LazyConfig (.py) path, or a name such as "
            "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml or common/models/retinanet.py"
        )
    return str(_zoo_root() / name)


def load_config(
    config_file: str, opts: Sequence[str] = (), confidence_threshold: float | None = None
) -> CfgNode:
    """The config of ``config_file`` with ``opts``, switched to the CAM adapters
    (``to_cam_config``); ``confidence_threshold`` sets every test score threshold.

    A YAML config: ``get_cfg()`` + ``cfg.GRADCAM`` keys, merged with the file and ``opts``
    (``KEY VALUE`` pairs). A LazyConfig (``.py``): loaded by ``LazyConfig.load``, ``opts`` as
    ``key=value`` overrides (as ``tools/lazyconfig_train_net.py`` takes them, e.g.
    ``train.init_checkpoint=model.pkl model.roi_heads.num_classes=3``), then described by a
    ``CfgNode`` (see ``_describe_lazy``) that also carries it (:func:`lazy_config`).

    Raises:
        ConfigError: unknown file, unknown key, bad YAML or Python, an odd ``opts``, or a
            LazyConfig without ``train.init_checkpoint``; ValueError: a detector with no CAM
            adapter.
    """
    path = config_path(config_file)
    if confidence_threshold is not None and not 0.0 <= confidence_threshold <= 1.0:
        raise ConfigError(f"--confidence-threshold must be in [0, 1], got {confidence_threshold}")
    if path.endswith(".py"):
        return _load_lazy(config_file, path, list(opts), confidence_threshold)
    cfg = add_gradcam_config(get_cfg())
    # detectron2's own RetinaNet YAML needs yaml.unsafe_load (a Python tag computes the anchor
    # sizes), and says so with a warning; for the configs shipped with detectron2 that warning
    # is noise. Config files run like code: only the weights file is treated as untrusted.
    shipped = os.path.abspath(path) != os.path.abspath(config_file)
    try:
        with quiet_loggers("fvcore.common.config") if shipped else contextlib.nullcontext():
            cfg.merge_from_file(path)
    except Exception as exc:  # yaml, yacs and detectron2 raise several kinds
        raise ConfigError(f"cannot read config {config_file}: {_yacs_message(exc)}") from None
    stray = [word for word in list(opts)[::2] if word.startswith("--")]
    if stray:
        raise ConfigError(
            f"--opts takes everything after it as KEY VALUE pairs, and {stray[0]} is not a "
            f"config key: put {stray[0]} before --opts"
        )
    if len(opts) % 2:
        raise ConfigError(
            f"--opts takes KEY VALUE pairs, got an odd number of words ({' '.join(opts)}); e.g. "
            "--opts MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu"
        )
    try:
        cfg.merge_from_list(list(opts))
    except Exception as exc:
        raise ConfigError(f"--opts: {_yacs_message(exc)}") from None
    if confidence_threshold is not None:
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    return to_cam_config(cfg)


def _load_lazy(
    config_file: str, path: str, opts: list[str], confidence_threshold: float | None
) -> CfgNode:
    from detectron2.config import LazyConfig

    stray = [word for word in opts if word.startswith("--")]
    if stray:
        raise ConfigError(
            f"--opts takes everything after it as key=value overrides, and {stray[0]} is not "
            f"one: put {stray[0]} before --opts"
        )
    bad = [word for word in opts if "=" not in word]
    if bad:
        raise ConfigError(
            f"--opts {bad[0]}: a LazyConfig (.py) takes key=value overrides, as detectron2's "
            "lazyconfig_train_net.py does, e.g. --opts train.init_checkpoint=model.pkl "
            "train.device=cpu"
        )
    try:
        with warnings.catch_warnings():
            # Imports made by the file (ViTDet's timm) warn about their own deprecations.
            warnings.simplefilter("ignore", FutureWarning)
            lazy = LazyConfig.load(path)
    except Exception as exc:  # the file runs as Python: any error
        raise ConfigError(
            f"cannot read config {config_file}: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    try:
        lazy = LazyConfig.apply_overrides(lazy, opts)
    except Exception as exc:
        raise ConfigError(f"--opts: {type(exc).__name__}: {first_line(exc)}") from None
    lazy = to_cam_config(lazy)  # first: a file with no detector is refused as such
    checkpoint = (lazy.get("train") or {}).get("init_checkpoint")
    if not checkpoint:
        # The weights check of the YAML route would name MODEL.WEIGHTS, no LazyConfig key.
        raise ConfigError(
            f"{config_file} has no train.init_checkpoint, so the detector would have random "
            "weights; pass --opts train.init_checkpoint=/path/to/model.pkl (or "
            f"train.init_checkpoint={RANDOM_WEIGHTS} to run with random weights, meaningless maps)"
        )
    if confidence_threshold is not None:
        _set_score_threshold(lazy.model, confidence_threshold)
    try:
        return _describe_lazy(lazy)
    except Exception as exc:  # a field of the wrong type, a broken interpolation
        raise ConfigError(
            f"cannot read config {config_file}: {type(exc).__name__}: {first_line(exc)}"
        ) from None


def _set_score_threshold(model, value: float) -> None:
    """Every test score threshold of a LazyConfig model node."""
    if "test_score_thresh" in model or "roi_heads" not in model:
        model.test_score_thresh = value  # RetinaNet, FCOS
        return
    heads = model.roi_heads
    for predictor in heads.get("box_predictors") or [heads.get("box_predictor")]:
        if predictor is not None:
            predictor.test_score_thresh = value


def _describe_lazy(lazy) -> CfgNode:
    """A ``CfgNode`` with the few keys the command reads, taken from a (CAM) LazyConfig:

    ``MODEL.META_ARCHITECTURE`` / ``MODEL.ROI_HEADS.NAME`` (the classes' names),
    ``*.NUM_CLASSES`` (``model.num_classes`` or ``model.roi_heads.num_classes``),
    ``INPUT.FORMAT`` (``model.input_format``, default BGR), ``MODEL.DEVICE`` and
    ``MODEL.WEIGHTS`` (``train.device``, default cpu, / ``train.init_checkpoint``),
    ``INPUT.MIN/MAX_SIZE_TEST`` (the ``ResizeShortestEdge`` of
    ``dataloader.test.mapper.augmentations``, else detectron2's defaults), ``DATASETS.TEST``
    (``dataloader.test.dataset.names``). The LazyConfig itself rides along
    (:func:`lazy_config`).
    """
    from detectron2.data import transforms as T

    cfg = add_gradcam_config(get_cfg())
    model = lazy.model
    arch = lazy_target(model._target_)
    cfg.MODEL.META_ARCHITECTURE = getattr(arch, "__name__", str(arch))
    heads = model.get("roi_heads")
    if heads is not None:
        cls = lazy_target(heads._target_)
        cfg.MODEL.ROI_HEADS.NAME = getattr(cls, "__name__", str(cls))
        count = heads.num_classes
    else:
        count = model.num_classes
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.RETINANET.NUM_CLASSES = int(count)
    cfg.INPUT.FORMAT = str(model.get("input_format", "BGR"))
    train = lazy.train
    cfg.MODEL.DEVICE = str(train.get("device", "cpu"))
    cfg.MODEL.WEIGHTS = str(train.init_checkpoint)
    test = (lazy.get("dataloader") or {}).get("test") or {}
    for aug in (test.get("mapper") or {}).get("augmentations") or []:
        if lazy_target(aug.get("_target_")) is T.ResizeShortestEdge:
            size = aug.short_edge_length
            size = size if isinstance(size, int) else min(size)
            cfg.INPUT.MIN_SIZE_TEST = int(size)
            cfg.INPUT.MAX_SIZE_TEST = int(aug.get("max_size", cfg.INPUT.MAX_SIZE_TEST))
    names = (test.get("dataset") or {}).get("names")
    if names:
        cfg.DATASETS.TEST = (names,) if isinstance(names, str) else tuple(names)
    cfg.__dict__[_LAZY] = lazy
    return cfg


def _yacs_message(exc: BaseException) -> str:
    text = first_line(exc).strip("'\"")
    if text.startswith("Non-existent"):
        text += " (check the spelling; detectron2's keys are in detectron2/config/defaults.py)"
    return text
