"""The one place where pictures are composed from maps: captioned overlay tiles, the inputs
sheet, grids, film strips, per-detection pictures and strips, the command lines' sheets.

``core.render`` holds the primitives (colour map, overlay, caption, boxes, grid, resize) and
``core.tiles`` the one tile (a map, or the picture and the reason there is none) and the one
film-strip policy that every task and the detectron2 hook use; this module decides what goes on a sheet and in which order, for the Lightning callback, the
detectron2 hook and both command lines. Every picture is ``uint8 (H, W, 3)`` RGB; maps are
``(H, W)`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import cv2
import numpy as np
import torch

from .core.render import (
    caption,
    draw_boxes,
    grid,
    heatmap,
    overlay,
    resize_max,
    to_uint8_image,
)
from .core.tiles import NO_EVIDENCE, StripPasses, evidence_text, map_tile
from .core.tracking import match_detections

__all__ = [
    "GREEN",
    "WHITE",
    "has_positive_evidence",
    "evidence_caption",
    "DetectionFilmStrips",
    "SHEET_COLUMNS",
    "NO_EVIDENCE",
    "evidence_text",
    "class_text",
    "overlay_tile",
    "sheet",
    "input_picture",
    "inputs_sheet",
    "film_strip",
    "detections_picture",
    "no_detections_picture",
    "detection_sheet",
    "detection_label",
    "pass_pictures",
    "detection_pictures",
    "DetectionLike",
    "seed_pictures",
    "seed_sheet",
    "short_layer",
]

GREEN = (0, 255, 0)
WHITE = (255, 255, 255)
#: Most tiles in one row of a sheet of samples.
SHEET_COLUMNS = 8

Boxes = torch.Tensor | np.ndarray | Sequence[Sequence[float]]


def overlay_tile(
    image: np.ndarray,
    cam: torch.Tensor | np.ndarray,
    text: str | None = None,
    *,
    boxes: Boxes | None = None,
    labels: Sequence[str] | None = None,
    box_color: tuple[int, int, int] = GREEN,
    colormap: str | int = "jet",
    alpha: float = 0.5,
    max_size: int | None = None,
    caption_height: int | None = None,
) -> np.ndarray:
    """``overlay(image, cam)``, then the boxes (with labels), shrunk to ``max_size``, then
    captioned with ``text`` (no band when ``text`` is None)."""
    picture = overlay(image, cam, colormap, alpha)
    if boxes is not None:
        picture = draw_boxes(picture, boxes, labels, color=box_color)
    picture = resize_max(picture, max_size)
    return picture if text is None else caption(picture, text, height=caption_height)


def sheet(tiles: Sequence[np.ndarray], ncols: int | None = None) -> np.ndarray:
    """Tiles row-major in one picture, ``ncols`` per row (default: up to ``SHEET_COLUMNS``)."""
    return grid(tiles, ncols=ncols or min(len(tiles), SHEET_COLUMNS))


def input_picture(
    image: torch.Tensor, input_format: str = "BGR", size: tuple[int, int] | None = None
) -> np.ndarray:
    """A detector's input ``(C, H, W)`` in [0, 255] (``input_format`` ``BGR`` or ``RGB``, as
    detectron2's ``INPUT.FORMAT``) as ``uint8 (H, W, 3)`` RGB; ``size``: ``(height, width)``
    to resize it to (the input dict's ``height``/``width``, the pixels detectron2 reports
    detections in)."""
    array = image.detach().float().cpu().clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if input_format == "BGR":
        array = array[:, :, ::-1]
    array = np.ascontiguousarray(array[:, :, :3])
    if size is not None and tuple(size) != array.shape[:2]:
        array = cv2.resize(array, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    return array


def inputs_sheet(
    images: Sequence[np.ndarray],
    boxes: Boxes | None = None,
    captions: Sequence[str] | None = None,
    max_size: int | None = None,
) -> np.ndarray:
    """The images as they are explained: each with its box (``boxes`` ``(N, 4)``, one per
    image), shrunk to ``max_size``, captioned when ``captions`` are given."""
    tiles = []
    for index, image in enumerate(images):
        tile = image if boxes is None else draw_boxes(image, boxes[index : index + 1])
        tile = resize_max(tile, max_size)
        tiles.append(tile if captions is None else caption(tile, captions[index]))
    return sheet(tiles)


def film_strip(firsts: Sequence[np.ndarray], passes: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Rows = samples or tracked detections, columns = ``firsts[row]`` (e.g. the input), then
    ``passes[column][row]`` for each pass, oldest first. A row missing from a pass (a
    detection not matched then) is left black (``passes[column][row]`` None)."""
    rows = len(firsts)
    if not rows:
        raise ValueError("a film strip needs at least one row")
    cells: list[np.ndarray] = []
    for row in range(rows):
        cells.append(firsts[row])
        for column in passes:
            cell = column[row] if row < len(column) else None
            cells.append(cell if cell is not None else np.zeros((1, 1, 3), np.uint8))
    return grid(cells, ncols=len(passes) + 1)


def detections_picture(
    image: np.ndarray,
    boxes: Boxes,
    labels: Sequence[str],
    text: str | None = None,
    max_size: int | None = None,
) -> np.ndarray:
    """The image with every detection's box and label, shrunk, captioned with ``text``."""
    picture = resize_max(draw_boxes(image, boxes, labels), max_size)
    return picture if text is None else caption(picture, text)


def no_detections_picture(
    image: np.ndarray, text: str = "no detections", max_size: int | None = None
) -> np.ndarray:
    """The input, shrunk, captioned: said, never an empty sheet."""
    return caption(resize_max(image, max_size), text)


def detection_sheet(
    image: np.ndarray,
    detections: Sequence[tuple[Boxes, str]],
    maps: Sequence[Sequence[torch.Tensor | np.ndarray]],
    texts: Sequence[Sequence[str]],
    *,
    colormap: str | int = "jet",
    alpha: float = 0.5,
    max_size: int | None = None,
    ncols: int | None = None,
    evidence: Sequence[Sequence[bool]] | None = None,
) -> np.ndarray:
    """One row per detection (``(box (4,), label)``), one column per layer: the detection's
    map ``maps[row][column]`` over the image with its box and label, captioned
    ``texts[row][column]``; ``ncols`` defaults to one row holding everything. A map whose
    ``evidence[row][column]`` is false is not drawn (``core.tiles.map_tile``): the cell is
    the image with the box, its caption ending ``: no positive evidence``."""
    tiles = []
    for row, ((box, label), row_maps, row_texts) in enumerate(zip(detections, maps, texts)):
        marks = partial(draw_boxes, boxes=torch.as_tensor(box)[None], labels=[label])
        for column, (cam, text) in enumerate(zip(row_maps, row_texts)):
            tiles.append(
                map_tile(
                    image,
                    cam,
                    text,
                    evidence=True if evidence is None else bool(evidence[row][column]),
                    marks=marks,
                    colormap=colormap,
                    alpha=alpha,
                    max_size=max_size,
                )
            )
    return grid(tiles, ncols=ncols or len(tiles))


def class_text(class_id: int, class_names: Sequence[str] | None = None) -> str:
    """The class's name when known, else ``class <id>``."""
    if class_names is not None and 0 <= class_id < len(class_names):
        return class_names[class_id]
    return f"class {class_id}"


class DetectionLike(Protocol):
    """What the detection pictures read of a detection (``detectron2_hooks.Detection``)."""

    box: torch.Tensor
    class_id: int
    score: float
    maps_by_layer: dict[str, dict[str, torch.Tensor]]


def has_positive_evidence(det: DetectionLike, layer: str, method: str) -> bool:
    """Whether ``det``'s map at ``layer`` for ``method`` has positive evidence: its
    ``evidence_by_layer`` mark when it has one, else whether the map has a positive value."""
    marks = getattr(det, "evidence_by_layer", None) or {}
    found = marks.get(layer, {}).get(method)
    if found is None:
        return bool(torch.as_tensor(det.maps_by_layer[layer][method]).max() > 0)
    return bool(found)


def evidence_caption(text: str, found: bool) -> str:
    """``text``, or ``text: no positive evidence`` for a map without any."""
    return evidence_text(text, found)


def detection_label(det: DetectionLike, class_names: Sequence[str] | None = None) -> str:
    """``<class> <score>``, as drawn beside a detection's box."""
    return f"{class_text(det.class_id, class_names)} {det.score:.2f}"


def pass_pictures(
    image: np.ndarray,
    detections: Sequence[DetectionLike],
    layers: Sequence[str],
    methods: Sequence[str],
    *,
    step: int,
    threshold: float | None = None,
    class_names: Sequence[str] | None = None,
    colormap: str | int = "jet",
    alpha: float = 0.5,
    max_size: int | None = None,
) -> dict[str, np.ndarray]:
    """One image's pictures at one pass of the detectron2 hook: ``"detections"`` (every box
    and label, captioned ``iter <step>: <n> detections``) and per method a sheet of the
    detections' overlays, highest score first (``#<rank> <label>``), or with several layers
    one row per detection, one column per layer. With no detection, every picture is the
    input captioned ``iter <step>: no detections [above <threshold>]``. A map with no
    positive evidence is captioned ``...: no positive evidence``."""
    if not detections:
        above = f" above {threshold:g}" if threshold is not None else ""
        empty = no_detections_picture(image, f"iter {step}: no detections{above}", max_size)
        return {"detections": empty, **{method: empty for method in methods}}
    labels = [detection_label(det, class_names) for det in detections]
    boxes = torch.stack([det.box for det in detections])
    header = f"iter {step}: {len(detections)} detections"
    pictures = {"detections": detections_picture(image, boxes, labels, header, max_size)}
    many = len(layers) > 1
    for method in methods:
        texts = [
            [short_layer(layer) if many else f"#{rank} {label}" for layer in layers]
            for rank, label in enumerate(labels)
        ]
        pictures[method] = detection_sheet(
            image,
            [(det.box, label) for det, label in zip(detections, labels)],
            [[det.maps_by_layer[layer][method] for layer in layers] for det in detections],
            texts,
            colormap=colormap,
            alpha=alpha,
            max_size=max_size,
            ncols=len(layers) if many else None,
            evidence=[
                [has_positive_evidence(det, layer, method) for layer in layers]
                for det in detections
            ],
        )
    return pictures


def _detection_cell(
    image: np.ndarray,
    det: DetectionLike,
    layer: str,
    method: str,
    text: str,
    colormap: str | int,
    max_size: int | None = None,
) -> np.ndarray:
    # The box in white and no label on it: the caption names the detection.
    return map_tile(
        image,
        det.maps_by_layer[layer][method],
        text,
        evidence=has_positive_evidence(det, layer, method),
        marks=partial(draw_boxes, boxes=det.box[None], color=WHITE),
        colormap=colormap,
        max_size=max_size,
    )


def detection_pictures(
    image: np.ndarray,
    det: DetectionLike,
    title: str,
    single: Sequence[str],
    strip: Sequence[str],
    methods: Sequence[str],
    method_labels: Mapping[str, str],
    colormap: str | int = "jet",
    strip_cell: int | None = None,
) -> dict[tuple[str, str] | str, np.ndarray]:
    """One detection's pictures (the detectron2 command line's): per single layer and method
    an overlay with the box, captioned ``<title> | <method label>`` (``@ <layer>`` with several
    layers), keyed ``(layer, method)``; for the ``strip`` layers one sheet, keyed ``"strip"``,
    a row per method and a column per layer (cells shrunk to ``strip_cell``), captioned with
    ``title`` and the detection's feature ``level`` when it has one. A map with no positive
    evidence is captioned so (``...: no positive evidence``)."""
    pictures: dict[tuple[str, str] | str, np.ndarray] = {}
    for layer in single:
        for method in methods:
            where = f" @ {layer}" if len(single) > 1 else ""  # one layer: printed, not drawn
            text = f"{title} | {method_labels[method]}{where}"
            pictures[(layer, method)] = _detection_cell(image, det, layer, method, text, colormap)
    if strip:
        cells = [
            _detection_cell(
                image,
                det,
                layer,
                method,
                f"{method_labels[method]} {layer.removeprefix('head.')}",
                colormap,
                strip_cell,
            )
            for method in methods
            for layer in strip
        ]
        level = getattr(det, "level", None)
        where = f", level {level}" if level is not None else ""
        pictures["strip"] = caption(grid(cells, ncols=len(strip)), f"{title}{where}", height=28)
    return pictures


@dataclass
class _Track:
    box: torch.Tensor
    class_id: int
    first: np.ndarray
    cells: dict[int, np.ndarray]


class DetectionFilmStrips:
    """Film strips of one image's detections across the detectron2 hook's passes: one row
    per tracked detection, the input with the detection's first box, then one column per
    pass (its overlay, captioned ``iter <step>`` and ``no positive evidence`` where so).

    A detection of a pass continues the track of the previous one it matches (same class,
    IoU >= ``match_iou`` with the track's latest box, greedy from the highest score, as the
    drift scalars match them: ``core.tracking.match_detections``); an unmatched one starts a
    track, up to ``max_tracks``. A track missing from a pass has a black cell there (a pass
    before the first detection: one row, black cells). Which passes are kept and shown is the
    tasks' policy, ``core.tiles.StripPasses``: at most ``max_columns`` shown, evenly spaced,
    the first and the latest always, at most ``2 * max_columns`` kept in memory. A map
    without positive evidence is not drawn (``core.tiles.map_tile``).
    """

    def __init__(
        self,
        image: np.ndarray,
        match_iou: float = 0.5,
        max_tracks: int = 5,
        max_columns: int = 10,
        thumb: int = 128,
        colormap: str | int = "jet",
        alpha: float = 0.5,
    ):
        self.image = image
        self.match_iou = match_iou
        self.max_tracks = max_tracks
        self.thumb = thumb
        self.colormap = colormap
        self.alpha = alpha
        self.passes = StripPasses(max_columns)
        self.tracks: list[_Track] = []

    def add_pass(
        self, step: int, detections: Sequence[DetectionLike], layer: str, method: str
    ) -> None:
        """Record one pass's detections (highest score first) and their maps."""
        column, dropped = self.passes.add()
        for track in self.tracks:
            for old in dropped:
                track.cells.pop(old, None)
        if not detections:
            return
        boxes = torch.stack([det.box.detach().float().cpu() for det in detections])
        classes = torch.tensor([det.class_id for det in detections])
        matched: dict[int, int] = {}
        if self.tracks:
            ref_boxes = torch.stack([t.box for t in self.tracks])
            ref_classes = torch.tensor([t.class_id for t in self.tracks])
            matched = dict(match_detections(boxes, classes, ref_boxes, ref_classes, self.match_iou))
        for index, det in enumerate(detections):
            cell = map_tile(
                self.image,
                det.maps_by_layer[layer][method],
                f"iter {step} {det.score:.2f}",
                evidence=has_positive_evidence(det, layer, method),
                marks=partial(draw_boxes, boxes=boxes[index : index + 1]),
                colormap=self.colormap,
                alpha=self.alpha,
                max_size=self.thumb,
            )
            if index in matched:
                track = self.tracks[matched[index]]
            elif len(self.tracks) < self.max_tracks:
                first = draw_boxes(self.image, boxes[index : index + 1])
                track = _Track(boxes[index], det.class_id, first, {})
                self.tracks.append(track)
            else:
                continue
            track.box = boxes[index]
            track.cells[column] = cell

    def picture(self, class_names: Sequence[str] | None = None) -> np.ndarray:
        """The strip; before any detection was tracked, one row: the input captioned
        ``no detections yet`` and a black cell per pass."""
        columns = self.passes.shown()
        if not self.tracks:
            first = caption(resize_max(self.image, self.thumb), "no detections yet")
            return film_strip([first], [[None] for _ in columns])
        firsts = [
            caption(
                resize_max(t.first, self.thumb), f"input: {class_text(t.class_id, class_names)}"
            )
            for t in self.tracks
        ]
        passes = [[t.cells.get(c) for t in self.tracks] for c in columns]
        return film_strip(firsts, passes)


def short_layer(layer: str) -> str:
    """``head.cls_subnet.3`` -> ``cls_subnet.3`` for captions."""
    return ".".join(layer.split(".")[-2:])


# ---------------------------------------------------------------------- command lines


def seed_pictures(
    view: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    guided: Mapping[str, torch.Tensor],
    kinds: Callable[[str], tuple[str, ...]],
    colormap: str | int = "jet",
) -> dict[str, np.ndarray]:
    """The seed's pictures, ``{kind: picture}``: for each gradient method in ``maps``
    (``(H, W)`` in [0, 1]) its heat map and its overlay on ``view`` ``(3, H, W)`` in [0, 1];
    for each guided method in ``guided`` (``(3, H, W)``) the gradient picture. ``kinds(method)``
    names the pictures (``("heatmap", "cam")``, ``("gb",)``)."""
    base = to_uint8_image(view)
    pictures: dict[str, np.ndarray] = {}
    for method, cam in maps.items():
        heat_kind, overlay_kind = kinds(method)
        pictures[heat_kind] = heatmap(cam, colormap)
        pictures[overlay_kind] = overlay(base, cam, colormap)
    for method, gradient in guided.items():
        pictures[kinds(method)[0]] = to_uint8_image(gradient)
    return pictures


def seed_sheet(
    view: torch.Tensor,
    pictures: Mapping[str, np.ndarray],
    methods: Sequence[str],
    kinds: Callable[[str], tuple[str, ...]],
    labels: Mapping[str, str],
    title: str,
) -> np.ndarray:
    """The seed's table row: the input captioned ``title``, then every picture of every
    method in order, captioned ``<label> heat map`` / ``<label> overlay`` / ``<label>``."""
    cells = [caption(to_uint8_image(view), title)]
    for method in methods:
        method_kinds = kinds(method)
        for kind in method_kinds:
            if kind.startswith("heatmap"):
                what = "heat map"
            else:
                what = "overlay" if len(method_kinds) > 1 else ""
            cells.append(caption(pictures[kind], f"{labels[method]} {what}".strip()))
    return grid(cells)
