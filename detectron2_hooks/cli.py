"""``detectron2-gradcam``: Grad-CAM and Grad-CAM++ for every detection of a detectron2 detector.

The seed's two detection demos (Faster R-CNN and RetinaNet) in one command. A stock config (a
model-zoo name or a YAML file) is switched to the CAM adapters (``to_cam_config``); weights come
from ``MODEL.WEIGHTS`` (``--opts MODEL.WEIGHTS path``), read without running code from the file
(``detectron2_hooks.weights``). Images are converted to ``INPUT.FORMAT`` and resized by the
test-time ``ResizeShortestEdge`` (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``) and explained by
:class:`~detectron2_hooks.predictor.CAMPredictor`, as ``DefaultPredictor`` runs them: the
detections are detectron2's (rescaled to the image, empty boxes dropped), boxes and maps are
in the original image's pixels, and every picture is drawn on the original image. The scalar
differentiated is each detection's class logit (``--score logit``, the default) or its
reported probability (``--score probability``); a map with no positive evidence is captioned
so.

Files per image, in ``--output-dir`` (``{det}`` = ``det00``, ``det01``, ... by decreasing score;
``{class}`` the class name with non-alphanumerics as ``_``):

- ``{image}-detections.png``: the explained detections, boxes labelled ``index: class score``;
- ``{image}-{det}-{class}-{method}.png``: the map of one detection as an overlay with its box,
  captioned with class, score and method (``gradcam``, ``gradcam++`` by default); with
  several layers ``{image}-{det}-{class}-{layer}-{method}.png``;
- ``--layer-name 'head.cls_subnet.*'`` (RetinaNet): ``{image}-{det}-{class}-cls_subnet-strip.png``,
  one strip per detection, a column per classification-subnet layer (``head.cls_subnet.0``
  to ``.7``) and a row per method, at the detection's feature level. Any glob over layer
  names (``*`` within one dotted component) makes such a strip.

Everything that can be checked is checked before the first file is written; a bad argument or
input ends the command with one line ``detectron2-gradcam: error: ...`` on stderr and exit
status 2. Files are written atomically, so an error never leaves a damaged picture.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg

from lightning_gradcam.core.checkpoints import RANDOM_WEIGHTS, WeightsError
from lightning_gradcam.core.command_line import (
    first_line,
    non_negative_int,
    report_error,
    run_command,
)
from lightning_gradcam.core.images_io import (
    ImageInputError,
    expand_image_paths,
    output_names,
    read_image,
    write_images,
)
from lightning_gradcam.core.layers import (
    LayerNotFoundError,
    expand_layer_names,
    is_layer_pattern,
)
from lightning_gradcam.core.methods import check_methods, get_method, method_names
from lightning_gradcam.core.render import COLORMAPS
from lightning_gradcam.pictures import detection_label, detection_pictures, detections_picture

from .config import add_gradcam_config, default_layer, to_cam_config
from .explain import Detection
from .predictor import CAMPredictor
from .selection import SCORES
from .weights import (
    load_detector_weights,
    quiet_loggers,
    resolve_weights,
)

__all__ = [
    "main",
    "build_parser",
    "load_config",
    "expand_layers",
    "class_names",
    "picture_names",
    "DEFAULT_METHODS",
    "STRIP_CELL",
]

PROG = "detectron2-gradcam"

#: The seed's two maps.
DEFAULT_METHODS = ("gradcam", "gradcam++")
#: Longer side, in pixels, of each cell of a strip (``--layer-name 'head.cls_subnet.*'``).
STRIP_CELL = 320

#: How a user of this command chooses a layer, for the "no such layer" message.
CLI_LAYER_HINT = (
    "or leave out --layer-name for the detector's default (roi_heads.res5 for C4, "
    "roi_heads.box_pooler for FPN, head.cls_subnet.7 for RetinaNet)"
)

_USER_ERRORS = (WeightsError, LayerNotFoundError, ImageInputError, ValueError)


class ConfigError(ValueError):
    """A config file or ``--opts`` that detectron2 cannot use."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``detectron2-gradcam``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Explain every detection of a detectron2 detector (Faster/Mask R-CNN C4 or FPN, "
            "Cascade R-CNN, PanopticFPN, ViTDet, RetinaNet, FCOS; YAML or LazyConfig) with "
            "Grad-CAM and Grad-CAM++. Writes {image}-detections.png and, per detection, "
            "{image}-det00-{class}-{method}.png (and {image}-det00-{class}-cls_subnet-strip.png "
            "with --layer-name 'head.cls_subnet.*')."
        ),
        epilog=(
            "example: detectron2-gradcam --config-file COCO-Detection/faster_rcnn_R_50_C4_1x.yaml "
            "--input photos/ --opts MODEL.WEIGHTS model_final_721ade.pkl MODEL.DEVICE cpu"
        ),
    )
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="a detectron2 YAML or LazyConfig (.py) file, or a model-zoo name such as "
        "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml, common/models/retinanet.py or "
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py; stock configs are switched to the CAM "
        "adapters",
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image files, folders of images, or globs such as 'photos/*.jpg'",
    )
    parser.add_argument(
        "--layer-name",
        action="append",
        metavar="LAYER",
        help="dotted module name to explain; repeat for several (default: cfg.GRADCAM.LAYER, "
        "else roi_heads.res5 for C4, roi_heads.box_pooler for FPN, head.cls_subnet.7 for "
        "RetinaNet). A glob such as 'head.cls_subnet.*' (RetinaNet's eight classification-"
        "subnet layers) gives one strip per detection. At image-level layers (backbone.*) "
        "Grad-CAM is not specific to a detection: add --methods hirescam",
    )
    parser.add_argument(
        "--max-detections",
        type=non_negative_int,
        default=10,
        metavar="N",
        help="explain the N highest-scoring detections per image (default 10)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        metavar="METHOD",
        help=f"CAM methods (default: {' '.join(DEFAULT_METHODS)}; also "
        f"{', '.join(m for m in method_names(detectors=True) if m not in DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--score",
        choices=SCORES,
        default="logit",
        help="the scalar differentiated per detection: its class logit before the softmax / "
        "sigmoid (logit, the default; does not saturate) or the score detectron2 reports "
        "(probability)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        metavar="P",
        help="minimum score of a detection (default: the config's SCORE_THRESH_TEST)",
    )
    parser.add_argument(
        "--output-dir", default="results", type=Path, help="folder for the pictures (results)"
    )
    parser.add_argument(
        "--colormap", choices=sorted(COLORMAPS), default="jet", help="heat-map colours (jet)"
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, as detectron2's demos: e.g. --opts MODEL.WEIGHTS "
        "/path/to/model.pkl MODEL.DEVICE cpu (MODEL.WEIGHTS random: random weights); for a "
        ".py LazyConfig key=value as lazyconfig_train_net.py: --opts "
        "train.init_checkpoint=/path/to/model.pkl train.device=cpu. Must come last",
    )
    return parser


# ---------------------------------------------------------------------------------- config


def _zoo_root() -> Path:
    """The model-zoo configs shipped inside detectron2 (``model_zoo.get_config_file``'s
    folder, found without ``pkg_resources``)."""
    import detectron2

    return Path(detectron2.__file__).parent / "model_zoo" / "configs"


def _zoo_names() -> list[str]:
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
    zoo = _zoo_names()
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
    ``CfgNode`` (see ``_describe_lazy``) that also carries it for ``_build``.

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


#: Where ``_build`` finds the LazyConfig behind a ``CfgNode`` made by ``_describe_lazy``
#: (in the node's ``__dict__``, beside yacs's own flags, so it is no config key).
_LAZY = "_lazy_config"


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
    """A ``CfgNode`` with the few keys this command reads, taken from a (CAM) LazyConfig:

    ``MODEL.META_ARCHITECTURE`` / ``MODEL.ROI_HEADS.NAME`` (the classes' names),
    ``*.NUM_CLASSES`` (``model.num_classes`` or ``model.roi_heads.num_classes``),
    ``INPUT.FORMAT`` (``model.input_format``, default BGR), ``MODEL.DEVICE`` and
    ``MODEL.WEIGHTS`` (``train.device``, default cpu, / ``train.init_checkpoint``), ``INPUT.MIN/MAX_SIZE_TEST`` (the
    ``ResizeShortestEdge`` of ``dataloader.test.mapper.augmentations``, else detectron2's
    defaults), ``DATASETS.TEST`` (``dataloader.test.dataset.names``). The LazyConfig itself
    rides along for ``_build``.
    """
    from detectron2.data import transforms as T

    from .config import lazy_target

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


def _device(cfg: CfgNode, opts: Sequence[str]) -> str | None:
    """A note when the config's CUDA device falls back to the CPU; ValueError when a device
    given in ``--opts`` cannot be used. The key is named as the config spells it:
    ``MODEL.DEVICE`` (YAML) or ``train.device`` (LazyConfig)."""
    lazy = cfg.__dict__.get(_LAZY) is not None
    key = "train.device" if lazy else "MODEL.DEVICE"
    text = str(cfg.MODEL.DEVICE)
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"{key} {text!r} is not a torch device (cpu, cuda, cuda:1)") from None
    if device.type != "cuda" or torch.cuda.is_available():
        return None
    given = (
        any(str(opt).split("=", 1)[0] == key for opt in opts) if lazy else key in list(opts)[::2]
    )
    if given:
        fix = "--opts train.device=cpu" if lazy else "--opts MODEL.DEVICE cpu"
        raise ValueError(f"{key} {text}: CUDA is not available here; use {fix}")
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    return f"the config asks for {key} {text}, which is not available: running on the CPU"


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


# ---------------------------------------------------------------------------------- layers


def expand_layers(model: torch.nn.Module, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--layer-name`` values to ``(single, strip)`` layer lists: a glob such as
    ``head.cls_subnet.*`` gives strip layers (``head.cls_subnet.0`` ... ``.7``, expanded by
    ``core.layers.expand_layer_names``, as the hook does), one strip per detection; other
    names are single layers.

    Raises:
        LayerNotFoundError: an unknown name, or a glob that matches no layer (closest names
            in the message).
    """
    single: list[str] = []
    strip: list[str] = []
    for name in names:
        found = expand_layer_names(model, [name], CLI_LAYER_HINT)
        (strip if is_layer_pattern(name) else single).extend(found)
    return list(dict.fromkeys(single)), list(dict.fromkeys(strip))


# ---------------------------------------------------------------------------------- pictures


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+-]+", "_", text).strip("_") or "_"


def picture_names(
    stem: str,
    index: int,
    class_name: str,
    single: Sequence[str],
    strip: Sequence[str],
    methods: Sequence[str],
) -> dict[tuple[str, str] | str, str]:
    """File names of one detection's pictures: ``{(layer, method): name}`` for single layers,
    ``{"strip": name}`` when there are strip layers."""
    base = f"{stem}-det{index:02d}-{_file_part(class_name)}"
    names: dict[tuple[str, str] | str, str] = {}
    for layer in single:
        middle = f"-{layer}" if len(single) > 1 else ""
        for method in methods:
            names[(layer, method)] = f"{base}{middle}-{method}.png"
    if strip:
        parent = ".".join(os.path.commonprefix([layer.split(".") for layer in strip]))
        names["strip"] = f"{base}-{_file_part(parent.removeprefix('head.')) or 'layers'}-strip.png"
    return names


def _label(det: Detection, index: int, names: Sequence[str]) -> str:
    return f"{index}: {detection_label(det, names)}"


def render_detection(
    image: np.ndarray,
    det: Detection,
    index: int,
    names: Sequence[str],
    single: Sequence[str],
    strip: Sequence[str],
    methods: Sequence[str],
    colormap: str = "jet",
) -> dict[tuple[str, str] | str, np.ndarray]:
    """One detection's pictures, keyed as ``picture_names`` (see
    ``lightning_gradcam.pictures.detection_pictures``), strip cells ``STRIP_CELL`` px."""
    title = _label(det, index, names)
    return detection_pictures(
        image,
        det,
        title,
        single,
        strip,
        methods,
        {m: get_method(m).label for m in methods},
        colormap,
        STRIP_CELL,
    )


# ---------------------------------------------------------------------------------- running


def _detector_name(cfg: CfgNode) -> str:
    arch = cfg.MODEL.META_ARCHITECTURE
    return f"{arch} with {cfg.MODEL.ROI_HEADS.NAME}" if arch == "GeneralizedRCNN" else arch


def _error(message: str) -> int:
    return report_error(PROG, message)


def _build(cfg: CfgNode, config_file: str) -> torch.nn.Module:
    """The detector in eval mode: ``build_model(cfg)``, or ``instantiate`` of the LazyConfig's
    model (moved to ``cfg.MODEL.DEVICE``); its random initialisation seeded (0) without
    touching the caller's RNG, so ``random`` weights give the same model every time.

    Raises:
        ConfigError: detectron2 cannot build it.
    """
    from detectron2.modeling import build_model

    lazy = cfg.__dict__.get(_LAZY)
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


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        methods = check_methods(
            [m for value in args.methods for m in value.split(",") if m], detectors=True
        )
    except ValueError as exc:
        parser.error(f"argument --methods: {exc}")
    output_dir: Path = args.output_dir
    if output_dir.exists() and not output_dir.is_dir():
        return _error(f"--output-dir {output_dir} exists and is not a folder")

    # Everything is checked before the first file is written.
    try:
        cfg = load_config(args.config_file, args.opts, args.confidence_threshold)
        if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
            raise ConfigError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: only BGR and RGB are supported")
        note = _device(cfg, args.opts)
        weights = str(cfg.MODEL.WEIGHTS)
        weights_file = None if weights == RANDOM_WEIGHTS else resolve_weights(weights)
        paths = list(dict.fromkeys(p for spec in args.input for p in expand_image_paths(spec)))
        stems = output_names(paths)
        for path in paths:
            read_image(path)
        model = _build(cfg, args.config_file)
        single, strip = expand_layers(model, args.layer_name or [default_layer(cfg)])
        if weights_file is not None:
            load_detector_weights(model, weights_file)
        layers = list(dict.fromkeys([*single, *strip]))
        predictor = CAMPredictor(
            cfg,
            layer=layers,
            methods=methods,
            score=args.score,
            max_detections=args.max_detections,
            model=model,
        )
        names = class_names(cfg)
    except _USER_ERRORS as exc:
        return _error(first_line(exc))

    if note:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if weights_file is None:
        print(
            f"{PROG}: warning: MODEL.WEIGHTS {RANDOM_WEIGHTS}: random weights, the detections "
            "and maps are meaningless",
            file=sys.stderr,
        )
    print(
        f"{_detector_name(cfg)}: weights {weights_file or RANDOM_WEIGHTS}; layers "
        f"{', '.join(layers)}; "
        f"methods {', '.join(methods)}; score {args.score}"
    )

    for path, stem in zip(paths, stems):
        try:
            image = read_image(path)  # RGB, the original: every picture is drawn on it
            pixels = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
            model_input = predictor.model_input(np.ascontiguousarray(pixels))
            detections = predictor(np.ascontiguousarray(pixels))
            labels = [_label(det, i, names) for i, det in enumerate(detections)]
            boxes = [det.box.tolist() for det in detections]
            pictures = {f"{stem}-detections.png": detections_picture(image, boxes, labels)}
            for index, det in enumerate(detections):
                rendered = render_detection(
                    image, det, index, names, single, strip, methods, args.colormap
                )
                files = picture_names(stem, index, names[det.class_id], single, strip, methods)
                pictures.update({files[key]: pic for key, pic in rendered.items()})
            write_images({output_dir / name: pic for name, pic in pictures.items()})
        except ValueError as exc:  # a layer that does not fit the detector: not the image's fault
            return _error(first_line(exc))
        except (RuntimeError, OSError) as exc:
            return _error(f"{path}: {first_line(exc)}")
        seen = tuple(model_input["image"].shape[-2:])
        print(
            f"{path}: {len(detections)} detections explained (model input {seen[1]}x{seen[0]} "
            f"px); wrote {len(pictures)} pictures {output_dir / stem}-*.png, "
            f"{image.shape[1]}x{image.shape[0]} px"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit status:
    0 on success, 2 on a bad argument or input (one line on stderr, nothing written for it)."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        # detectron2 and torch deprecation chatter would bury the command's own lines.
        with warnings.catch_warnings(), quiet_loggers("torch.fx._symbolic_trace"):
            warnings.simplefilter("ignore", UserWarning)
            return _run(args, parser)

    return run_command(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
