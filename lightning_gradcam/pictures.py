"""The one place where pictures are composed from maps: captioned overlay tiles, the inputs
sheet, grids, film strips, per-detection pictures and strips, the command lines' sheets.

``core.render`` holds the primitives (colour map, overlay, caption, boxes, grid, resize); this
module decides what goes on a sheet and in which order, for the Lightning callback, the
detectron2 hook and both command lines. Every picture is ``uint8 (H, W, 3)`` RGB; maps are
``(H, W)`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from .core.tiles import NO_EVIDENCE, evidence_text
from .core.tracking import match_detections

__all__ = [
    "GREEN",
    "WHITE",
    "has_positive_evidence",
    "evidence_caption",
    "DetectionFilmStrips",
    "SHEET_COLUMNS",
    "SamplePictures",
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
) -> np.ndarray:
    """One row per detection (``(box (4,), label)``), one column per layer: the detection's
    map ``maps[row][column]`` over the image with its box and label, captioned
    ``texts[row][column]``; ``ncols`` defaults to one row holding everything."""
    tiles = []
    for (box, label), row_maps, row_texts in zip(detections, maps, texts):
        for cam, text in zip(row_maps, row_texts):
            tiles.append(
                overlay_tile(
                    image,
                    cam,
                    text,
                    boxes=torch.as_tensor(box)[None],
                    labels=[label],
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


@dataclass
class SamplePictures:
    """The pictures of a fixed set of samples (the callback's): captioned overlay tiles with
    each sample's box, the inputs sheet, thumbnails and the film strip.

    ``images``: ``uint8 (H, W, 3)`` RGB per sample; ``boxes`` ``(N, 4)`` and ``labels``
    ``(N,)`` when known."""

    images: Sequence[np.ndarray]
    boxes: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    class_names: Sequence[str] | None = None
    colormap: str | int = "jet"
    alpha: float = 0.5

    def _box(self, index: int) -> torch.Tensor | None:
        return None if self.boxes is None else self.boxes[index : index + 1]

    def tiles(
        self,
        maps: torch.Tensor,
        texts: Sequence[str],
        size: int | None,
        evidence: Sequence[bool] | None = None,
    ) -> list[np.ndarray]:
        """One overlay per sample of ``maps`` ``(N, H, W)``, with its box, shrunk to
        ``size``, captioned ``texts[i]``. A sample whose ``evidence[i]`` is false (its map is
        zero everywhere after the ReLU) is not drawn blank: its tile is the input alone,
        captioned ``texts[i]`` + ``": no positive evidence"`` (``evidence_text``)."""
        tiles = []
        for index, image in enumerate(self.images):
            if evidence is not None and not evidence[index]:
                box = self._box(index)
                picture = image if box is None else draw_boxes(image, box)
                text = evidence_text(texts[index], False)
                tiles.append(caption(resize_max(picture, size), text))
                continue
            tiles.append(
                overlay_tile(
                    image,
                    maps[index],
                    texts[index],
                    boxes=self._box(index),
                    colormap=self.colormap,
                    alpha=self.alpha,
                    max_size=size,
                )
            )
        return tiles

    def score_texts(self, class_ids: torch.Tensor, scores: torch.Tensor) -> list[str]:
        """``<class> <score>`` per sample (``score <s>`` for a callable's target, id < 0)."""
        texts = []
        for class_id, score in zip(class_ids.tolist(), scores.tolist()):
            name = "score" if class_id < 0 else class_text(class_id, self.class_names)
            texts.append(f"{name} {score + 0.0:.2f}")  # + 0.0: a score of -0.0 reads 0.00
        return texts

    def inputs(self, size: int | None) -> np.ndarray:
        """The samples with their boxes, captioned with their labels' names when known."""
        captions = None
        if self.labels is not None:
            captions = [class_text(int(c), self.class_names) for c in self.labels]
        return inputs_sheet(self.images, self.boxes, captions, size)

    def film_strip(self, passes: Sequence[Sequence[np.ndarray]], size: int | None) -> np.ndarray:
        """Rows = samples, columns = the input (with its box), then ``passes`` (thumbnails
        from ``tiles``), oldest first."""
        firsts = []
        for index, image in enumerate(self.images):
            box = self._box(index)
            picture = image if box is None else draw_boxes(image, box)
            firsts.append(caption(resize_max(picture, size), "input"))
        return film_strip(firsts, passes)


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
            [
                evidence_caption(
                    short_layer(layer) if many else f"#{rank} {label}",
                    has_positive_evidence(det, layer, method),
                )
                for layer in layers
            ]
            for rank, (det, label) in enumerate(zip(detections, labels))
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
        )
    return pictures


def _detection_cell(
    image: np.ndarray,
    det: DetectionLike,
    cam: torch.Tensor,
    text: str,
    colormap: str | int,
    max_size: int | None = None,
) -> np.ndarray:
    # The box in white and no label on it: the caption names the detection.
    return overlay_tile(
        image,
        cam,
        text,
        boxes=det.box[None],
        box_color=WHITE,
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
            text = evidence_caption(
                f"{title} | {method_labels[method]}{where}",
                has_positive_evidence(det, layer, method),
            )
            cam = det.maps_by_layer[layer][method]
            pictures[(layer, method)] = _detection_cell(image, det, cam, text, colormap)
    if strip:
        cells = [
            _detection_cell(
                image,
                det,
                det.maps_by_layer[layer][method],
                evidence_caption(
                    f"{method_labels[method]} {layer.removeprefix('head.')}",
                    has_positive_evidence(det, layer, method),
                ),
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
    before the first detection: one row, black cells). At most
    ``max_columns`` passes are shown, evenly spaced, the first and the latest always (at most
    ``2 * max_columns`` are kept in memory: every ``2^k``-th pass and the latest).
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
        self.max_columns = max(2, max_columns)
        self.thumb = thumb
        self.colormap = colormap
        self.alpha = alpha
        self.passes = 0
        self.stride = 1  # passes kept: multiples of it, and the latest
        #: pass number -> iteration, for the passes kept (thinned to bound the memory)
        self.steps: dict[int, int] = {}
        self.tracks: list[_Track] = []

    def add_pass(
        self, step: int, detections: Sequence[DetectionLike], layer: str, method: str
    ) -> None:
        """Record one pass's detections (highest score first) and their maps."""
        column = self.passes
        self.passes += 1
        self.steps[column] = step
        self._thin()
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
            found = has_positive_evidence(det, layer, method)
            cell = overlay_tile(
                self.image,
                det.maps_by_layer[layer][method],
                evidence_caption(f"iter {step} {det.score:.2f}", found),
                boxes=boxes[index : index + 1],
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

    def _thin(self) -> None:
        """Keep the passes whose number is a multiple of a stride, and the latest; the stride
        doubles when more than ``2 * max_columns`` are kept, so a long run's strips take
        bounded memory and stay evenly spaced."""
        latest = self.passes - 1
        while True:
            kept = [c for c in self.steps if c % self.stride == 0 or c == latest]
            if len(kept) <= 2 * self.max_columns:
                break
            self.stride *= 2
        for column in [c for c in self.steps if c not in kept]:
            del self.steps[column]
            for track in self.tracks:
                track.cells.pop(column, None)

    def _columns(self) -> list[int]:
        kept = list(self.steps)
        if len(kept) <= self.max_columns:
            return kept
        picked = np.linspace(0, len(kept) - 1, self.max_columns).round().astype(int)
        return [kept[i] for i in sorted(set(picked.tolist()))]

    def picture(self, class_names: Sequence[str] | None = None) -> np.ndarray:
        """The strip; before any detection was tracked, one row: the input captioned
        ``no detections yet`` and a black cell per pass."""
        columns = self._columns()
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
