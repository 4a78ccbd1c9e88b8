"""The per-task protocol between ``GradCAMCallback`` and what a model's output means.

The callback knows *when* to explain, *which* fixed samples, *where* to log and what to do
on failure. A task knows the rest: how a batch holds images and ground truth, which scalar a
map explains (a class logit, one detection's logit, a class's logits over its pixels), what
is drawn and which numbers are measured. A new task is a subclass of :class:`CAMTask` added
with :func:`register_task`; the callback is not touched.

One pass, as the callback runs it::

    samples = task.parse_batch(batch)        # per validation batch, until num_samples
    task.check_samples(samples)              # arguments against the samples (before training)
    part = task.explain_range(network, samples, start, stop)   # explain() on samples[start:stop]
    result = task.combine([part, ...])
    report = task.report(result, samples, step=..., epoch=...)   # pictures + scalars, drift

``report`` is one skeleton for every task (:meth:`CAMTask.report`): per method, a tile per
*item* (a sample, a ground-truth object, an (image, class) pair), the grid of them, a
film-strip thumbnail of each (``core.tiles.StripPasses`` keeps the passes), and the task's
scalars. A task supplies only its per-item pieces: which items there are and which map,
picture, marks and caption each has (:meth:`CAMTask.report_items`), and what is measured
over them (:meth:`CAMTask.measure`). Every tile is drawn by ``core.tiles.map_tile``, so a map
without positive evidence is said, never drawn blank, in every task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from ..core.faithfulness import check_metrics
from ..core.render import caption, resize_max
from ..core.resilience import concat_batches
from ..core.state import cam_mode, preserve_model_state
from ..core.tiles import NO_EVIDENCE, Marks, StripPasses, map_tile
from ..pictures import film_strip, sheet
from .options import check_target

__all__ = [
    "CAMTask",
    "PassReport",
    "ReportItem",
    "TaskOptions",
    "TaskSamples",
    "probe_output",
    "register_task",
    "registered_tasks",
    "task_named",
    "unregister_task",
]


class TaskSamples(Protocol):
    """The fixed samples a task explains, on the CPU: images and their ground truth."""

    def __len__(self) -> int: ...

    def head(self, n: int) -> TaskSamples:
        """The first ``n`` samples."""

    def slice(self, start: int, stop: int | None) -> TaskSamples:
        """Samples ``start:stop`` (a chunk, when memory runs short)."""

    @classmethod
    def concat(cls, parts: Sequence[TaskSamples]) -> TaskSamples:
        """The samples of several batches, in order."""

    def to_state(self) -> dict[str, Any]:
        """Tensors and lists only (a checkpoint holds them); ``from_state`` reads them back."""

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TaskSamples: ...

    def digest(self) -> str:
        """A hash of the images: the same images give the same digest."""


@dataclass(frozen=True)
class TaskOptions:
    """The callback's arguments that every task reads (already checked by the callback).
    ``methods`` is ``()`` until a task is chosen when the user gave none: the task's own
    ``default_methods`` then."""

    methods: tuple[str, ...]
    layer: str | None = None
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None
    target: object = "auto"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    colormap: str | int = "jet"
    alpha: float = 0.5
    max_image_size: int | None = 256
    class_names: tuple[str, ...] | None = None
    filmstrip_size: int | None = 96
    faithfulness: tuple[str, ...] = ()
    # The user's batch_parser (or None): a task applies it to each batch before its own parsing.
    batch_parser: Callable[[Any], Any] | None = None


@dataclass
class PassReport:
    """What one pass produced, all computed before anything is written.

    ``images``: ``(tag, uint8 (H, W, 3) RGB, caption)``; ``scalars``: ``{tag: value}``; tags
    are relative to ``<tag_prefix>/<layer>`` (``"gradcam/sample_00"``,
    ``"gradcam/energy_in_box"``). ``summary``: ``{method: {name: value}}`` for the
    callback's ``history``. ``per_image``: ``{scalar tag: [value or None per sample]}`` for
    the scalars that are means over the samples, so an alarm can name the images.
    """

    images: list[tuple[str, np.ndarray, str | None]] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    per_image: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class ReportItem:
    """One tile of a pass, for every method: what :meth:`CAMTask.report` draws.

    ``tag``: relative to the method (``"sample_00"``, ``"object_03"``); ``picture``: the
    ``uint8 (H, W, 3)`` RGB image under the map; ``text``: what the tile is (``"cat 0.93"``);
    ``maps``: ``{method: (H, W) in [0, 1]}`` (empty: no map, e.g. a missed object, said with
    ``reason``; a film-strip thumbnail says ``short_reason`` for any tile without a drawn
    map); ``evidence``: ``{method: bool}``; ``marks``: the ground truth drawn over the
    picture (its box, its mask's outline), on the film strip's first column too, captioned
    ``first_text``; ``map_marks``: what the map explains, drawn wherever there is a map (a
    detection's own box); ``data``:
    the task's own, for :meth:`CAMTask.measure` (its detection, its image index).
    """

    tag: str
    picture: np.ndarray
    text: str
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    evidence: dict[str, bool] = field(default_factory=dict)
    reason: str | None = None
    short_reason: str = "none"
    marks: Marks | None = None
    map_marks: Marks | None = None
    first_text: str = "input"
    data: Any = None

    def shown(self, method: str) -> bool:
        """Whether ``method``'s map is drawn: there is one, with positive evidence."""
        return method in self.maps and self.evidence.get(method, False)

    def why_not(self, method: str) -> str | None:
        """Why ``method``'s map is not drawn (``reason`` without a map, else
        :data:`~lightning_gradcam.core.tiles.NO_EVIDENCE`); None when it is."""
        if self.shown(method):
            return None
        return (self.reason if method not in self.maps else None) or NO_EVIDENCE

    def caption_for(self, method: str) -> str:
        """The tile's caption for ``method``: ``text``, or ``"<text>: <why no map>"``."""
        why = self.why_not(method)
        return self.text if why is None else f"{self.text}: {why}"


class CAMTask(ABC):
    """One kind of model: what its batches hold, what one map explains, what is logged.

    Subclasses set ``name`` and implement the abstract methods; ``recognises`` lets the
    callback choose the task by itself (``GradCAMCallback(task=None)``). A task instance
    belongs to one callback and holds its state across passes (fixed targets, drift).
    """

    name: ClassVar[str]
    samples_class: ClassVar[type]  # the TaskSamples class parse_batch returns
    # What ``GradCAMCallback(methods=None)`` computes for this task (docs/callback.md#methods).
    default_methods: ClassVar[tuple[str, ...]] = ("gradcam", "gradcam++")
    #: Whether the task reads the callback's ``images=`` (``samples_from_arrays``).
    takes_given_images: ClassVar[bool] = False
    #: Whether the task measures the callback's ``faithfulness`` metrics.
    measures_faithfulness: ClassVar[bool] = False

    def __init__(self, options: TaskOptions):
        self.options = options
        self.layer_name: str | None = options.layer  # the full name, once resolved
        self._strip_passes = StripPasses()
        # {method: {column: [thumbnail per item]}}, for the columns StripPasses keeps
        self._strip_cells: dict[str, dict[int, list[np.ndarray]]] = {}
        self._strip_firsts: list[np.ndarray] = []

    # ---------------------------------------------------------------- options

    @classmethod
    def check_target(cls, target: object) -> object:
        """The callback's ``target``, checked (``tasks.options.check_target``: a policy, a
        class id, one id per image, a callable); a task whose maps are not chosen by class
        accepts only ``"auto"``."""
        return check_target(target)

    @classmethod
    def check_faithfulness(cls, metrics: object) -> tuple[str, ...]:
        """The callback's ``faithfulness`` metrics, checked; a task that does not measure
        them (``measures_faithfulness``) refuses any, so none is dropped in silence."""
        names = check_metrics(metrics)
        if names and not cls.measures_faithfulness and cls is not CAMTask:
            raise ValueError(
                f"faithfulness={names!r}: the {cls.name} task does not measure faithfulness "
                "metrics (they perturb the image and re-score one class); leave "
                "faithfulness=() for this model"
            )
        return names

    @classmethod
    def samples_from_arrays(
        cls, images: Any, labels: Any = None, boxes: Any = None, masks: Any = None
    ) -> TaskSamples | None:
        """The samples of the callback's ``images=`` (with ``labels``/``boxes``/``masks``),
        or None when this task does not take given images (``takes_given_images``)."""
        return None

    # ---------------------------------------------------------------- recognition

    @classmethod
    @abstractmethod
    def recognises(cls, network: nn.Module, batch: Any) -> bool:
        """Whether this task is the one for ``network`` fed batches like ``batch``: look at
        types and shapes first; :func:`probe_output` runs the network once if needed."""

    # ---------------------------------------------------------------- samples

    @abstractmethod
    def parse_batch(self, batch: Any) -> TaskSamples:
        """The images and ground truth of one batch, on the CPU; a clear error when the
        batch does not hold what this task needs."""

    def samples_from_state(self, state: dict[str, Any]) -> TaskSamples:
        """The samples saved by ``TaskSamples.to_state`` (a checkpoint), read back."""
        return self.samples_class.from_state(state)

    def check_samples(self, samples: TaskSamples) -> None:  # noqa: B027 - optional hook
        """Raise when the samples contradict the callback's arguments (before training)."""

    # ---------------------------------------------------------------- the pass

    @abstractmethod
    def explain(self, network: nn.Module, samples: TaskSamples) -> Any:
        """The maps of ``samples`` (one chunk); sets ``layer_name`` to the layer's full
        name. Raise on a model, layer or target that cannot be explained."""

    def explain_range(
        self, network: nn.Module, samples: TaskSamples, start: int, stop: int | None
    ) -> Any:
        """The maps of ``samples[start:stop]``: the callback's call, on chunks when memory
        runs short. Override when a sample's target depends on its place in the whole set."""
        return self.explain(network, samples.slice(start, stop))

    def combine(self, parts: Sequence[Any]) -> Any:
        """The result of all chunks, from the results of each (in order)."""
        return concat_batches(parts)

    def report(self, result: Any, samples: TaskSamples, step: int, epoch: int) -> PassReport:
        """Pictures and scalars of one pass; updates the task's drift state.

        Per method: a tile per item (:meth:`report_items`) logged as ``<method>/<item tag>``
        and captioned ``"<caption>, step <step>"``, their ``<method>/grid``, a thumbnail per
        item for the film strip (captioned ``"ep <epoch>"``, ``": <short_reason>"`` where no
        map is drawn), and :meth:`measure`'s scalars
        as ``<method>/<name>``. Pictures logged once come first (:meth:`once_images`)."""
        options = self.options
        items = self.report_items(result, samples)
        report = PassReport(images=self.once_images(samples))
        keep_strip = options.filmstrip_size is not None and bool(items)
        if keep_strip:
            column, dropped = self._strip_passes.add()
            if not self._strip_firsts:
                self._strip_firsts = [self._first_cell(item) for item in items]
        for method in options.methods:
            tiles = [self.tile(item, method, options.max_image_size) for item in items]
            for item, tile in zip(items, tiles):
                text = f"{item.caption_for(method)}, step {step}"
                report.images.append((f"{method}/{item.tag}", tile, text))
            if tiles:
                report.images.append((f"{method}/grid", sheet(tiles), None))
            summary = self.measure(method, items, samples, report)
            report.summary[method] = summary
            report.scalars.update({f"{method}/{k}": v for k, v in summary.items()})
            if keep_strip:
                cells = self._strip_cells.setdefault(method, {})
                for old in dropped:
                    cells.pop(old, None)
                cells[column] = [
                    self.tile(item, method, options.filmstrip_size, f"ep {epoch}", thumb=True)
                    for item in items
                ]
        return report

    def tile(
        self,
        item: ReportItem,
        method: str,
        size: int | None,
        text: str | None = None,
        thumb: bool = False,
    ) -> np.ndarray:
        """``item``'s tile for ``method`` (``core.tiles.map_tile``), shrunk to ``size``,
        captioned ``text`` (default: the item's own caption), with why there is no map
        when none is drawn (``short_reason`` on a film-strip ``thumb``)."""
        return map_tile(
            item.picture,
            item.maps.get(method),
            item.text if text is None else text,
            evidence=item.shown(method),
            reason=item.short_reason if thumb else item.why_not(method),
            marks=item.marks,
            map_marks=item.map_marks,
            colormap=self.options.colormap,
            alpha=self.options.alpha,
            max_size=size,
        )

    def _first_cell(self, item: ReportItem) -> np.ndarray:
        picture = item.picture if item.marks is None else item.marks(item.picture)
        return caption(resize_max(picture, self.options.filmstrip_size), item.first_text)

    def report_items(self, result: Any, samples: TaskSamples) -> list[ReportItem]:
        """The pass's items in order, each with its maps for every method: ``report``'s
        per-item pieces. May fix the task's targets at the first pass. (A task that
        overrides ``report`` and ``filmstrip`` whole need not implement it.)"""
        raise NotImplementedError(
            f"{type(self).__name__} must implement report_items and measure (the per-item "
            "pieces of CAMTask.report), or override report and filmstrip"
        )

    def measure(
        self, method: str, items: list[ReportItem], samples: TaskSamples, report: PassReport
    ) -> dict[str, float]:
        """The scalars of ``method`` over ``items`` (``{name: value}``, the pass's summary),
        updating the drift state; may add more scalars (``report.scalars``, with the method
        in the tag) and ``report.per_image`` entries."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement measure with report_items, or override "
            "report and filmstrip"
        )

    def once_images(self, samples: TaskSamples) -> list[tuple[str, np.ndarray, str | None]]:
        """Pictures logged at the first pass only, before its tiles (e.g. the inputs)."""
        return []

    def faithfulness(  # noqa: B027 - optional hook
        self, network: nn.Module, samples: TaskSamples, result: Any
    ) -> dict[str, dict[str, float]]:
        """``{method or "random": {metric: value}}`` when ``options.faithfulness`` is set and
        the task can measure it; ``{}`` otherwise."""
        return {}

    def monitored_scalars(self, samples: TaskSamples) -> tuple[str, ...]:
        """The scalars ``report`` gives at every pass from the first, for these samples,
        relative to ``<tag_prefix>/<layer>`` (``"gradcam/energy_in_box"``): what a
        ``ModelCheckpoint`` or ``EarlyStopping`` can monitor from epoch 0. Drift, which
        starts at the second pass, is not among them."""
        return ()

    def filmstrip(self, method: str) -> np.ndarray:
        """Rows = items (samples, objects, (image, class) pairs), columns = the input with
        the item's ground truth, then the passes ``core.tiles.StripPasses`` shows (at most
        ``FILMSTRIP_COLUMNS``, the first and the latest always), oldest first, as ``uint8
        (H, W, 3)`` RGB."""
        cells = self._strip_cells.get(method)
        if not cells:
            raise RuntimeError(
                f"no CAM pass has run for method {method!r} yet (or filmstrip_size=None): "
                "train with the callback first"
            )
        columns = [cells[c] for c in self._strip_passes.shown() if c in cells]
        return film_strip(self._strip_firsts, columns)

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs (fixed targets, the drift references)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore ``state_dict()``'s output."""


_TASKS: list[type[CAMTask]] = []


def register_task(task: type[CAMTask], *, first: bool = True) -> type[CAMTask]:
    """Add a task the callback may choose by itself. Tasks are asked in order (the most
    specific first: a newly registered task goes before the built-in ones unless
    ``first=False``); registering the same name again replaces it. Usable as a decorator."""
    if not (isinstance(task, type) and issubclass(task, CAMTask)):
        raise TypeError(f"register_task takes a CAMTask subclass, got {task!r}")
    if not getattr(task, "name", None):
        raise ValueError(f"{task.__name__} must set a class attribute name")
    _TASKS[:] = [t for t in _TASKS if t.name != task.name]
    _TASKS.insert(0 if first else len(_TASKS), task)
    return task


def unregister_task(name: str) -> None:
    """Remove the task called ``name`` (a no-op when there is none)."""
    _TASKS[:] = [t for t in _TASKS if t.name != name]


def registered_tasks() -> tuple[type[CAMTask], ...]:
    """The tasks in the order they are asked."""
    return tuple(_TASKS)


def task_named(name: str) -> type[CAMTask]:
    """The registered task called ``name``; the error lists the names."""
    for task in _TASKS:
        if task.name == name:
            return task
    names = ", ".join(repr(t.name) for t in _TASKS)
    raise ValueError(f"no task is called {name!r}; the tasks are {names}, or pass a CAMTask")


def probe_output(network: nn.Module, inputs: Any) -> Any:
    """The network's output on ``inputs`` in eval mode under ``no_grad``, leaving no trace
    (modes, RNG, BatchNorm statistics as they were): for ``recognises`` to look at."""
    with preserve_model_state(network), cam_mode(), torch.no_grad():
        return network(inputs)
