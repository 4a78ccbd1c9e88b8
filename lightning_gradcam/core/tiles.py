"""The one tile and the one film-strip retention policy of every task and the detectron2 hook.

A *tile* is one map over one picture, with what locates it (a box, a mask's outline) drawn
on top, shrunk, then captioned (``render.caption``). A map with no positive evidence (zero
everywhere after the ReLU), or no map at all (a missed object), is never drawn as a blank
overlay, which would read as "attention nowhere": the tile is the picture alone, and its
caption says why (:data:`NO_EVIDENCE`, or the caller's reason, such as ``"missed"``).

A film strip shows one column per pass; :class:`StripPasses` decides which passes it keeps
and shows, so a long run's strips take bounded memory and stay evenly spaced.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .render import caption, overlay, resize_max

__all__ = ["FILMSTRIP_COLUMNS", "NO_EVIDENCE", "StripPasses", "evidence_text", "map_tile"]

#: What a tile without positive evidence says instead of drawing a blank overlay.
NO_EVIDENCE = "no positive evidence"
#: Most passes a film strip shows (the first and the latest always among them).
FILMSTRIP_COLUMNS = 12

Marks = Callable[[np.ndarray], np.ndarray]


def evidence_text(text: str, evidence: bool, reason: str | None = None) -> str:
    """``text`` when the map has evidence, else ``"<text>: <reason>"`` (default
    :data:`NO_EVIDENCE`)."""
    return text if evidence else f"{text}: {reason or NO_EVIDENCE}"


def map_tile(
    image: np.ndarray,
    cam: torch.Tensor | np.ndarray | None,
    text: str | None,
    *,
    evidence: bool = True,
    reason: str | None = None,
    marks: Marks | None = None,
    map_marks: Marks | None = None,
    colormap: str | int = "jet",
    alpha: float = 0.5,
    max_size: int | None = None,
) -> np.ndarray:
    """``overlay(image, cam)``, then ``map_marks`` (what the map explains, e.g. the
    detection's own box) and ``marks`` (the ground truth: a box, a mask's outline), shrunk to
    ``max_size``, captioned ``text``.

    Without ``evidence``: ``image`` with the marks, no colour map. Without a map (``cam``
    None, e.g. a missed object): ``image`` with ``marks`` only. Either is captioned
    ``"<text>: <reason>"`` (``reason`` defaults to :data:`NO_EVIDENCE`). ``text`` None: no
    caption band (only for a tile that shows a map)."""
    shown = cam is not None and evidence
    picture = overlay(image, cam, colormap, alpha) if shown else image
    if cam is not None and map_marks is not None:
        picture = map_marks(picture)
    if marks is not None:
        picture = marks(picture)
    picture = resize_max(picture, max_size)
    if not shown:
        said = reason or NO_EVIDENCE
        return caption(picture, f"{text}: {said}" if text else said)
    return picture if text is None else caption(picture, text)


class StripPasses:
    """Which passes a film strip keeps and which it shows.

    Kept: every ``stride``-th pass and the latest; the stride doubles whenever more than
    ``2 * max_columns`` would be kept, so memory stays bounded however long the run. Shown:
    at most ``max_columns`` of the kept passes, the nearest to evenly spaced pass numbers,
    the first and the latest always.

    Example::

        passes = StripPasses(max_columns=3)
        for _ in range(10):
            column, dropped = passes.add()   # forget the cells of the dropped columns
        passes.shown()                       # [0, 4, 9]: the kept passes are 0, 2, ..., 8, 9
    """

    def __init__(self, max_columns: int = FILMSTRIP_COLUMNS):
        self.max_columns = max(2, int(max_columns))
        self.count = 0
        self.stride = 1
        self.kept: list[int] = []

    def add(self) -> tuple[int, list[int]]:
        """A new pass: its column number, and the earlier columns no longer kept."""
        column = self.count
        self.count += 1
        self.kept.append(column)
        while True:
            keep = [c for c in self.kept if c % self.stride == 0 or c == column]
            if len(keep) <= 2 * self.max_columns:
                break
            self.stride *= 2
        dropped = [c for c in self.kept if c not in keep]
        self.kept = keep
        return column, dropped

    def shown(self) -> list[int]:
        """The columns to draw, oldest first."""
        if len(self.kept) <= self.max_columns:
            return list(self.kept)
        kept = np.asarray(self.kept)
        # the kept pass nearest to each of max_columns evenly spaced pass numbers
        targets = np.linspace(kept[0], kept[-1], self.max_columns)
        nearest = np.abs(kept[None, :] - targets[:, None]).argmin(axis=1)
        return [int(kept[i]) for i in sorted(set(nearest.tolist()))]
