"""``lightning-gradcam``: explain image files with torchvision classification networks.

For every image and network it writes the pictures of the original Grad-CAM.pytorch (heat
map and overlay for Grad-CAM and Grad-CAM++, guided backpropagation, guided Grad-CAM and
guided Grad-CAM++) as ``{image}-{network}-{kind}.png`` in the output folder, and prints the
predicted class. The network runs on ``--device`` (``auto``, the default: CUDA if this machine
has it, else the CPU; ``--device cuda`` without CUDA is an error). Every argument is checked (weights against the network, layer, class id,
images) before the first file is written; a bad one ends the command with a one-line
``lightning-gradcam: error: ...`` on stderr and exit status 2.

This module holds the parser and the messages; one image is explained by
:func:`lightning_gradcam.explain_image.explain_image`, networks are checked and built by
:mod:`lightning_gradcam.models.networks`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .core.checkpoints import RANDOM_WEIGHTS, WeightsError
from .core.command_line import (
    DeviceError,
    add_device_argument,
    first_line,
    non_negative_int,
    report_error,
    resolve_device,
    run_command,
)
from .core.faithfulness import METRICS, check_metrics
from .core.images_io import (
    ImageInputError,
    expand_image_paths,
    output_names,
    read_image,
    write_images,
)
from .core.layers import LayerNotFoundError
from .core.methods import check_methods, method_names
from .core.render import COLORMAPS
from .engine import CAMEngine
from .explain_image import ImageExplanation, explain_image, picture_suffixes
from .io import sample_image as make_sample_image
from .models.networks import (
    SEED_NETWORKS,
    DownloadError,
    NetworkError,
    NetworkSpec,
    available_networks,
    check_network_name,
    materialize,
    prepare_network,
)

__all__ = ["main", "build_parser", "picture_suffixes", "DEFAULT_METHODS"]

PROG = "lightning-gradcam"

#: The seed's pictures: Grad-CAM and Grad-CAM++, guided backpropagation and guided Grad-CAM(++).
DEFAULT_METHODS = ("gradcam", "gradcam++", "guided_backprop", "guided_gradcam", "guided_gradcam++")

_USER_ERRORS = (NetworkError, WeightsError, LayerNotFoundError, ImageInputError, ValueError)


def _split(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: names may be given with spaces or commas
    (not file paths, which may hold commas)."""
    return [part for value in values or () for part in value.split(",") if part]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-gradcam``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Explain images with Grad-CAM, Grad-CAM++, guided backpropagation and guided "
            "Grad-CAM(++) for torchvision classification networks. Writes "
            "{image}-{network}-{kind}.png per image and network (kind: heatmap, cam, "
            "heatmap++, cam++, gb, cam_gb, cam++_gb; grid with --format grid)."
        ),
    )
    parser.add_argument(
        "--image-path",
        help="an image file, a folder of images or a glob such as 'photos/*.jpg' "
        "(default: a generated sample image of coloured shapes)",
    )
    parser.add_argument(
        "--network",
        nargs="+",
        default=["resnet50"],
        metavar="NAME",
        help=f"one or more torchvision classification models (default resnet50), e.g. "
        f"{', '.join(SEED_NETWORKS)}; see --list-networks",
    )
    parser.add_argument(
        "--weight-path",
        nargs="+",
        metavar="FILE",
        help="a state dict per network (torch.save(model.state_dict()); old torchvision zoo "
        "files such as densenet121-a639ec97.pth work), or 'random' for random weights "
        "(meaningless maps). Default: torchvision's pretrained weights, from the torch hub "
        "cache or downloaded",
    )
    parser.add_argument(
        "--layer-name",
        nargs="+",
        metavar="LAYER",
        help="dotted module name of the layer to explain, one per network (default: the last "
        "convolutional stage: layer4 for resnets, the last ReLU of features for vgg, features "
        "for densenet and mobilenet_v2, Mixed_7c for inception_v3, conv5 for shufflenet_v2; "
        "the last layer with a spatial output for other networks)",
    )
    parser.add_argument(
        "--class-id",
        type=_class_id,
        help="class to explain (default: the predicted class)",
    )
    parser.add_argument(
        "--output-dir", default="results", type=Path, help="folder for the pictures (results)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        metavar="METHOD",
        help=f"CAM methods (default: {' '.join(DEFAULT_METHODS)}; also "
        f"{', '.join(m for m in method_names() if m not in DEFAULT_METHODS)})",
    )
    add_device_argument(parser, "cuda if this machine has it, else cpu")
    parser.add_argument(
        "--format",
        choices=("files", "grid"),
        default="files",
        help="files: one picture per method and kind (default); grid: also one side-by-side "
        "sheet per image and network, {image}-{network}-grid.png",
    )
    parser.add_argument(
        "--input-size",
        type=_positive_int,
        metavar="PIXELS",
        help="side of the square network input (default: the weights' preset, 224; 299 for "
        "inception_v3); images are resized and centre-cropped to it",
    )
    parser.add_argument(
        "--colormap", choices=sorted(COLORMAPS), default="jet", help="heat-map colours (jet)"
    )
    parser.add_argument(
        "--faithfulness",
        nargs="+",
        metavar="METRIC",
        help=f"also print, per image and method and for a random map, how faithful the maps "
        f"are: any of {', '.join(METRICS)} (e.g. --faithfulness deletion,insertion; 16 steps, "
        "blurred baseline, softmax probability; see docs/faithfulness.md)",
    )
    parser.add_argument(
        "--list-networks",
        action="store_true",
        help="print the network names torchvision offers and exit",
    )
    return parser


def _class_id(text: str) -> int:
    return non_negative_int(text, hint="; class ids start at 0")


def _positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _per_network(
    parser: argparse.ArgumentParser, option: str, values: list[str], networks: list[str]
) -> list[str | None]:
    if not values:
        return [None] * len(networks)
    if len(values) == len(networks):
        return values
    if option == "--weight-path" and values == [RANDOM_WEIGHTS]:
        return values * len(networks)
    parser.error(
        f"argument {option}: {len(values)} given for {len(networks)} networks; give one per "
        "network, in the order of --network"
    )
    raise AssertionError  # parser.error exits


def _summary(spec: NetworkSpec, done: ImageExplanation) -> str:
    summary = f"predicted {spec.class_name(done.predicted)} (p={done.probability:.3f})"
    if done.explained != done.predicted:
        summary += f", explained {spec.class_name(done.explained)}"
    return summary


def _faithfulness_lines(done: ImageExplanation) -> list[str]:
    lines = []
    for name, values in done.faithfulness.items():
        numbers = ", ".join(f"{key} {value:.4g}" for key, value in values.items())
        if all(math.isnan(value) for value in values.values()):
            numbers = "not measured, the map is flat (no positive evidence)"
        lines.append(f"  faithfulness {name}: {numbers}")
    return lines


def _error(message: str) -> int:
    return report_error(PROG, message)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        methods = check_methods(_split(args.methods))
    except ValueError as exc:
        parser.error(f"argument --methods: {exc}")
    try:
        args.faithfulness = check_metrics(_split(args.faithfulness))
    except ValueError as exc:
        parser.error(f"argument --faithfulness: {exc}")
    networks = _split(args.network)
    if not networks:
        parser.error("argument --network: give at least one network name")
    weights = _per_network(parser, "--weight-path", list(args.weight_path or ()), networks)
    layers = _per_network(parser, "--layer-name", _split(args.layer_name), networks)
    try:
        device = resolve_device(args.device)
    except DeviceError as exc:
        return _error(str(exc))
    output_dir: Path = args.output_dir
    if output_dir.exists() and not output_dir.is_dir():
        return _error(f"--output-dir {output_dir} exists and is not a folder")

    # Everything is checked before the first file is written.
    try:
        for name in networks:
            check_network_name(name)
        if args.image_path is None:
            paths, names = [None], ["sample"]
        else:
            paths = expand_image_paths(args.image_path)
            names = output_names(paths)
            for path in paths:
                read_image(path)
        specs = []
        for name, weight_path, layer in zip(networks, weights, layers):
            specs.append(prepare_network(name, weight_path, layer, args.input_size, args.class_id))
    except DownloadError as exc:
        return _error(
            f"{exc}. Pass a local state dict with --weight-path FILE (for instance that file, "
            f"fetched on another machine), or --weight-path {RANDOM_WEIGHTS} to run with "
            "random weights (the maps are then meaningless)"
        )
    except _USER_ERRORS as exc:
        return _error(first_line(exc))

    if args.image_path is None:
        print("no --image-path given: explaining a generated sample image (shapes on clutter)")
    total = len(specs) * len(paths)
    with tqdm(total=total, unit="image", disable=None, file=sys.stderr) as bar:
        while specs:
            spec = specs.pop(0)  # drop each network's weights once it is done
            if spec.random:
                print(
                    f"{PROG}: warning: {spec.name} has random weights (--weight-path "
                    f"{RANDOM_WEIGHTS}): its maps and predictions are meaningless",
                    file=sys.stderr,
                )
            try:
                model = materialize(spec, device)
                engine = CAMEngine(model, layer=spec.layer, methods=methods)
                bar.write(
                    f"{spec.name}: weights from {spec.source}; layer "
                    f"{spec.layer or '(automatic)'}; input {spec.preprocess.crop_size}px",
                    file=sys.stdout,
                )
                for path, stem in zip(paths, names):
                    image = make_sample_image() if path is None else read_image(path)
                    done = explain_image(
                        engine,
                        spec,
                        image,
                        methods,
                        device,
                        class_id=args.class_id,
                        colormap=args.colormap,
                        faithfulness=args.faithfulness,
                        grid=args.format == "grid",
                    )
                    pictures = done.pictures
                    stem_out = output_dir / f"{stem}-{spec.name}"
                    write_images({f"{stem_out}-{kind}.png": pic for kind, pic in pictures.items()})
                    label = "sample" if path is None else str(path)
                    bar.write(
                        f"{label} [{spec.name}]: {_summary(spec, done)}; wrote {len(pictures)} pictures "
                        f"{stem_out}-*.png",
                        file=sys.stdout,
                    )
                    for line in _faithfulness_lines(done):
                        bar.write(line, file=sys.stdout)
                    bar.update(1)
            except _USER_ERRORS + (RuntimeError, OSError) as exc:
                return _error(f"{spec.name}: {first_line(exc)}")
            del model, engine
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit status:
    0 on success, 2 on a bad argument or input (one line on stderr, nothing written for it)."""
    parser = build_parser()

    def body(args: argparse.Namespace) -> int:
        if args.list_networks:
            print("\n".join(available_networks()))
            return 0
        return _run(args, parser)

    return run_command(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
