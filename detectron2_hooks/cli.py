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
so. The detector runs on ``--device`` (``auto``: the config's ``MODEL.DEVICE`` or
``train.device``, on the CPU with a note when that is CUDA and this machine has none; CUDA
asked for explicitly, by ``--device`` or in ``--opts``, is an error without it).

This module holds the parser and the messages; the work is in library modules:
:mod:`~detectron2_hooks.loading` (the config), :mod:`~detectron2_hooks.building` (device,
detector, class names, layers) and :mod:`~detectron2_hooks.outputs` (the pictures).

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
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from lightning_gradcam.core.checkpoints import RANDOM_WEIGHTS, WeightsError
from lightning_gradcam.core.command_line import (
    add_device_argument,
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
from lightning_gradcam.core.layers import LayerNotFoundError
from lightning_gradcam.core.methods import check_methods, method_names
from lightning_gradcam.core.render import COLORMAPS

from .building import (
    build_detector,
    check_input_format,
    class_names,
    detector_name,
    expand_layers,
    use_device,
)
from .config import default_layer
from .loading import load_config
from .outputs import explain_image
from .predictor import CAMPredictor
from .selection import SCORES
from .weights import load_detector_weights, quiet_loggers, resolve_weights

__all__ = ["main", "build_parser", "DEFAULT_METHODS", "PROG"]

PROG = "detectron2-gradcam"

#: The seed's two maps.
DEFAULT_METHODS = ("gradcam", "gradcam++")
# ConfigError and DeviceError are ValueErrors.
_USER_ERRORS = (WeightsError, LayerNotFoundError, ImageInputError, ValueError)


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
    add_device_argument(
        parser,
        "the config's MODEL.DEVICE or train.device, on the CPU when that is CUDA and this "
        "machine has none",
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


def _error(message: str) -> int:
    return report_error(PROG, message)


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
        check_input_format(cfg)
        note = use_device(cfg, args.device, args.opts)
        weights = str(cfg.MODEL.WEIGHTS)
        weights_file = None if weights == RANDOM_WEIGHTS else resolve_weights(weights)
        paths = list(dict.fromkeys(p for spec in args.input for p in expand_image_paths(spec)))
        stems = output_names(paths)
        for path in paths:
            read_image(path)
        model = build_detector(cfg, args.config_file)
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
        f"{detector_name(cfg)}: weights {weights_file or RANDOM_WEIGHTS}; layers "
        f"{', '.join(layers)}; "
        f"methods {', '.join(methods)}; score {args.score}"
    )

    for path, stem in zip(paths, stems):
        try:
            image = read_image(path)  # RGB, the original: every picture is drawn on it
            result = explain_image(
                predictor, image, stem, names, single, strip, methods, args.colormap
            )
            write_images({output_dir / name: pic for name, pic in result.pictures.items()})
        except ValueError as exc:  # a layer that does not fit the detector: not the image's fault
            return _error(first_line(exc))
        except (RuntimeError, OSError) as exc:
            return _error(f"{path}: {first_line(exc)}")
        height, width = result.input_size
        print(
            f"{path}: {len(result.detections)} detections explained (model input "
            f"{width}x{height} px); wrote {len(result.pictures)} pictures "
            f"{output_dir / stem}-*.png, {image.shape[1]}x{image.shape[0]} px"
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
