"""GradCAMHook: per-detection Grad-CAM pictures and drift scalars in TensorBoard while a
detectron2 model trains.

Every ``period`` iterations, and once at the last iteration, the hook explains the top
detections of a few fixed images with :class:`DetectionCAM` and puts the pictures and numbers
into the trainer's ``EventStorage`` (``put_image`` / ``put_scalar``), where detectron2's own
``TensorboardXWriter`` writes them beside the losses. The tags are listed in
:class:`GradCAMHook`'s docstring ("Logged tags"). Every one of these scalars
but drift is written at every pass from the first, so a monitor can rely on it. Detections
are matched across passes by class and box overlap (greedy, highest score first, IoU >=
``match_iou``); a drift scalar without any matched pair is not written. Scalars use
the first layer's maps. A map with no positive evidence (zero everywhere after the ReLU) is
captioned "no positive evidence", left out of drift, and counts 0 in ``energy_in_box`` and
``pointing_game`` (``no_evidence_rate`` says how many); an image with no detection has energy
0, pointing 0 and ``no_evidence_rate`` 1. The scalar differentiated is the detection's class logit by
default (``score="logit"``), which does not saturate as the probability does.

Getting everything written: one rule, the one detectron2's own ``EvalHook`` follows.

- **The hook runs before the** ``PeriodicWriter``. A writer writes a scalar only if its
  iteration is newer than the last one it wrote, so a scalar put after the writer, in the
  iteration it wrote, is never written. :class:`~detectron2_hooks.trainer.GradCAMTrainerMixin`
  (a ``DefaultTrainer`` built from config) and
  :func:`~detectron2_hooks.trainer.insert_before_writers` (your own ``build_hooks``) put it
  there; with ``SimpleTrainer.register_hooks`` list it before the ``PeriodicWriter``. The hook
  does not reorder the trainer's hooks. Registered after the writer (``register_hooks([hook])``
  on a built ``DefaultTrainer``), its pictures still reach TensorBoard, at the writer's next
  write and with their own step (the last pass's in the writer's ``after_train``), but the
  scalars of a pass at an iteration where the writer writes are lost.
- **The last pass runs in the last iteration's** ``after_step``, not in ``after_train``: the
  model is final there, and every writer still writes what is put then.
- **Passes between the writer's writes**: a writer keeps only the latest value of a scalar, so
  when ``period`` is not a multiple of the writer's period (20 in ``DefaultTrainer``) the
  scalars of a pass would be replaced by the next pass's before they are written. Give the
  hook ``writers=`` (the ``TensorboardXWriter`` / ``JSONWriter`` your ``PeriodicWriter``
  holds) and it calls their public ``write()`` right after each pass; ``GradCAMTrainerMixin``
  does that for you.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventWriter

from lightning_gradcam.core.layers import expand_layer_names, unwrap_model
from lightning_gradcam.core.methods import check_methods
from lightning_gradcam.core.render import to_chw
from lightning_gradcam.core.resilience import PassGuard, check_on_error
from lightning_gradcam.core.state import preserve_rng
from lightning_gradcam.core.tracking import DriftTracker
from lightning_gradcam.pictures import DetectionFilmStrips, input_picture, pass_pictures

from .config import config_methods, config_score
from .explain import DETECTOR_LAYER_HINT, Detection, DetectionCAM
from .hook_arguments import check_hook_arguments
from .hook_inputs import fixed_inputs
from .population import LoaderMetrics
from .selection import check_score

__all__ = ["GradCAMHook", "parse_layers"]


def _output_size(item: dict) -> tuple[int, int] | None:
    """The input dict's ``(height, width)``, when it has them."""
    if "height" in item and "width" in item:
        return int(item["height"]), int(item["width"])
    return None


def parse_layers(layer: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``None``/``""`` -> None (the detector's default); ``"a,b"`` or ``["a", "b"]`` -> names.

    A glob such as ``"head.cls_subnet.*"`` (RetinaNet's eight classification-subnet layers)
    is expanded against the model in ``before_train`` by ``core.layers.expand_layer_names``.
    """
    if layer is None:
        return None
    if isinstance(layer, str):
        names = [part.strip() for part in layer.split(",")]
    else:
        names = [str(part).strip() for part in layer]
    names = [name for name in names if name]
    return tuple(names) or None


class GradCAMHook(HookBase):
    """Log per-detection Grad-CAM overlays and drift scalars while a detectron2 model trains.

    ``trainer.register_hooks([GradCAMHook(dataset="my_val", num_images=4, period=100),
    hooks.PeriodicWriter(writers)])``, or build it from ``cfg.GRADCAM`` with
    :meth:`from_config` (see ``detectron2_hooks.trainer.GradCAMTrainerMixin`` for a one-line
    ``DefaultTrainer``). Register it before the ``PeriodicWriter``: the hook puts its pictures
    and scalars into the trainer's ``EventStorage``, and the writers write what is there when
    they run (module docstring).

    Example::

        from detectron2.engine import DefaultTrainer
        from detectron2_hooks import GradCAMHook
        from detectron2_hooks.trainer import insert_before_writers

        class Trainer(DefaultTrainer):  # or GradCAMTrainerMixin, built from cfg.GRADCAM
            def build_hooks(self):
                cam = GradCAMHook(dataset="my_val", num_images=4, period=100)
                return insert_before_writers(super().build_hooks(), cam)

        Trainer(cfg).train()

    Logged tags (``gradcam`` is ``tag_prefix``, ``NN`` the image's index, two digits; the
    step is detectron2's iteration):

    - ``gradcam/image_NN/detections``: image: the input with the top detections' boxes,
      class names and scores; with no detection, the input captioned "no detections"
    - ``gradcam/image_NN/<method>``: image: one overlay per detection (highest score first);
      with several layers one row per detection and one column per layer
    - ``gradcam/image_NN/<method>/filmstrip``: image: one row per tracked detection, its
      overlay at each pass (iterations as columns, at most ``filmstrip_columns``)
    - ``gradcam/image_NN/num_detections``: scalar: detections explained
    - ``gradcam/image_NN/<method>/energy_in_box``: scalar: mean share of a detection's map
      inside its box (no positive evidence, or no detection: 0)
    - ``gradcam/image_NN/<method>/pointing_game``: scalar: share of detections whose map's
      peak lies in its box
    - ``gradcam/image_NN/<method>/no_evidence_rate``: scalar: share of detections whose map
      has no positive evidence (1 with no detection)
    - ``gradcam/image_NN/<method>/drift_vs_prev``: scalar: mean ``1 - pearson`` between the
      maps of detections matched to the previous pass (no matched pair: not written)
    - ``gradcam/image_NN/<method>/drift_vs_first``: scalar: the same against the first pass
      that found detections in the image

    Args:
        inputs: fixed images, a list of detectron2 dicts: model inputs with an ``"image"``
            tensor (used as they are), or dataset dicts (``"file_name"`` ...) which go through
            the test-time ``DatasetMapper(cfg, is_train=False)``.
        dataset: or a registered dataset name; its first ``num_images`` dicts are mapped with
            the test-time mapper. Exactly one of ``inputs`` and ``dataset``.
        num_images: images taken from ``dataset`` (or from ``inputs``).
        layer: a dotted module name, a comma-separated string or a sequence of names
            (``None``: the detector's default, ``roi_heads.res5`` C4, ``roi_heads.box_pooler``
            FPN, ``head.cls_subnet.7`` RetinaNet); ``"head.cls_subnet.*"`` = all eight
            RetinaNet classification-subnet layers, shown as one strip per detection. At
            image-level and RetinaNet head layers channel-averaged Grad-CAM lights every
            similar region; add ``"hirescam"`` for a map specific to the detection.
        methods: CAM methods (``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``,
            ``hirescam``, or one added with ``lightning_gradcam.register_method``).
        period: iterations between passes; 0 = only at the last iteration.
        max_detections: top detections explained per image.
        cfg: the config for the test-time mapper (default: ``trainer.cfg`` of a
            ``DefaultTrainer``); needed only for dataset dicts without ``mapper``.
        mapper: a callable dataset dict -> model input dict, used instead of
            ``DatasetMapper(cfg, is_train=False)``; in a LazyConfig training loop (no
            ``CfgNode``) ``instantiate(cfg.dataloader.test.mapper)``.
        class_names: names for the class ids (default: the dataset's ``thing_classes``).
        tag_prefix: first part of every tag.
        match_iou: box overlap for matching detections across passes (drift scalars).
        max_image_size: longer side of each logged tile, in pixels.
        colormap, alpha: heat-map colours and overlay opacity (see ``core.render.overlay``).
        writers: event writers (``TensorboardXWriter``, ``JSONWriter``) whose public
            ``write()`` is called right after each pass, so that the scalars of every pass are
            written even at iterations where the ``PeriodicWriter`` does not write. Give the
            ones your ``PeriodicWriter`` holds; ``GradCAMTrainerMixin`` does.
        on_error: ``"warn"``: a pass that raises is skipped with a one-line warning, marked
            by the scalar ``<tag_prefix>/skipped_passes`` at its iteration, and training goes
            on; after 3 failed passes in a row the hook switches itself off (out of memory,
            a pass is first retried on fewer images at a time). ``"raise"``: the error stops
            the run. The unlogged pass in ``before_train`` always raises.
        score: the scalar differentiated per detection: ``"logit"`` (default; the class logit
            before the softmax / sigmoid) or ``"probability"`` (the reported score).
        filmstrip_columns: most passes shown in each ``<method>/filmstrip`` (evenly spaced,
            first and latest included); 0: no film strips.
        metrics_loader: a data loader (e.g. ``build_detection_test_loader(cfg, "val")``):
            at each pass every rank explains its batches and ``P/validation/<method>/
            {energy_in_box, pointing_game, no_evidence_rate}`` and
            ``P/validation/detections_per_image`` are the means over all of them, joined by
            one ``all_reduce`` under ``launch`` (``detectron2_hooks.population``).
        metrics_batches: measure only the first N batches of ``metrics_loader`` per rank.

    The pass runs on the main process only, on the unwrapped model, with no barrier and no
    copy of the model; the model is back in train mode afterwards, parameters' ``.grad`` are
    untouched and no RNG stream advances, so training with the hook ends with the same
    weights, bit for bit, as training without it.
    """

    def __init__(
        self,
        inputs: Sequence[dict] | None = None,
        dataset: str | None = None,
        num_images: int = 4,
        layer: str | Sequence[str] | None = None,
        methods: str | Sequence[str] = ("gradcam", "gradcam++"),
        period: int = 100,
        max_detections: int = 5,
        *,
        cfg: Any = None,
        mapper: Callable[[dict], dict] | None = None,
        class_names: Sequence[str] | None = None,
        tag_prefix: str = "gradcam",
        match_iou: float = 0.5,
        max_image_size: int = 256,
        colormap: str = "jet",
        alpha: float = 0.5,
        writers: Sequence[EventWriter] = (),
        on_error: str = "warn",
        score: str = "logit",
        filmstrip_columns: int = 10,
        metrics_loader: Any = None,
        metrics_batches: int | None = None,
    ):
        writers = check_hook_arguments(
            inputs,
            dataset,
            num_images,
            period,
            max_detections,
            max_image_size,
            filmstrip_columns,
            match_iou,
            tag_prefix,
            writers,
            mapper,
        )
        self.methods = check_methods(methods, detectors=True)
        self.score = check_score(score)
        self.filmstrip_columns = filmstrip_columns
        self._source_inputs = list(inputs) if inputs is not None else None
        self.dataset = dataset
        self.num_images = num_images
        self.layer = parse_layers(layer)
        self.period = period
        self.max_detections = max_detections
        self.cfg = cfg
        self.mapper = mapper
        self.class_names = list(class_names) if class_names is not None else None
        self.tag_prefix = tag_prefix.strip("/ ")
        self.match_iou = float(match_iou)
        self.max_image_size = max_image_size
        self.colormap = colormap
        self.alpha = alpha
        self.writers = writers
        self.on_error = check_on_error(on_error)
        self._guard = PassGuard("GradCAMHook", self.on_error)

        self.enabled = True
        self.layers: tuple[str, ...] = ()
        self.inputs: list[dict] = []
        self.history: list[dict[str, Any]] = []  # per pass: {"iter", "scalars"}
        self.latest_images: dict[str, np.ndarray] = {}  # tag -> uint8 (H, W, 3) RGB
        self._cam: DetectionCAM | None = None
        self._pictures: list[np.ndarray] = []
        # one key per (image, method); detections matched across passes by class and box;
        # maps with no positive evidence are left out of drift and energy
        self._tracker = DriftTracker(
            match_iou=self.match_iou, leave_out_empty=True, always_defined=True
        )
        self._strips: dict[tuple[int, str], DetectionFilmStrips] = {}
        self._metrics = LoaderMetrics.optional(metrics_loader, self.methods, metrics_batches)

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        inputs: Sequence[dict] | None = None,
        dataset: str | None = None,
        writers: Sequence[EventWriter] = (),
    ) -> GradCAMHook | None:
        """A hook from ``cfg.GRADCAM`` (see ``add_gradcam_config``); None if not ENABLED.

        Images: ``inputs`` or ``dataset`` if given, else the first of ``cfg.DATASETS.TEST``,
        else of ``cfg.DATASETS.TRAIN``. ``GRADCAM.LAYER`` may hold several comma-separated
        names or ``head.cls_subnet.*``. ``writers``: as in the constructor.
        """
        if "GRADCAM" not in cfg:
            raise ValueError(
                "cfg has no GRADCAM node; call detectron2_hooks.add_gradcam_config(cfg) "
                "(or to_cam_config(cfg)) before building the hook"
            )
        node = cfg.GRADCAM
        if not node.ENABLED:
            return None
        if inputs is None and dataset is None:
            names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
            if not names:
                raise ValueError(
                    "no images for GradCAMHook: cfg.DATASETS.TEST and cfg.DATASETS.TRAIN are "
                    "empty; register a dataset or pass inputs=/dataset="
                )
            dataset = names[0]
        return cls(
            inputs=inputs,
            dataset=dataset,
            num_images=int(node.NUM_IMAGES),
            layer=node.LAYER or None,
            methods=config_methods(cfg),
            period=int(node.PERIOD),
            max_detections=int(node.MAX_DETECTIONS),
            cfg=cfg,
            writers=writers,
            score=config_score(cfg),
        )

    # ------------------------------------------------------------------ detectron2 hook API

    def before_train(self) -> None:
        self.enabled = comm.is_main_process()
        model = unwrap_model(self.trainer.model)
        if self._metrics is not None:  # every rank measures its shard of metrics_loader
            self._metrics.start(model, self.layer, self.score)
        if not self.enabled:
            return
        layers = (
            expand_layer_names(model, self.layer, DETECTOR_LAYER_HINT)
            if self.layer is not None
            else None
        )
        # Builds and checks the layers now: a wrong name fails here, with close matches.
        self._cam = DetectionCAM(model, layer=layers, methods=self.methods, score=self.score)
        self.layers = self._cam.layers
        with preserve_rng():
            cfg = self.cfg if self.cfg is not None else getattr(self.trainer, "cfg", None)
            self.inputs = fixed_inputs(
                self.dataset, self._source_inputs, self.num_images, self.mapper, cfg
            )
        if self.class_names is None and self.dataset is not None:
            names = MetadataCatalog.get(self.dataset).get("thing_classes", None)
            self.class_names = list(names) if names else None
        # One unlogged pass now: a layer the scores never reach, or inputs the model cannot
        # take, fail before the first iteration instead of at the first period.
        self._cam.explain(self.inputs[:1], max_detections=1)
        input_format = getattr(model, "input_format", "BGR")
        # In the pixels the detections are reported in (the dicts' height/width, if any).
        self._pictures = [
            input_picture(item["image"], input_format, _output_size(item)) for item in self.inputs
        ]
        self._tracker = DriftTracker(
            match_iou=self.match_iou, leave_out_empty=True, always_defined=True
        )
        self._strips = {}
        self._guard = PassGuard("GradCAMHook", self.on_error)  # a fresh count per run

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        last = next_iter == self.trainer.max_iter
        if not (last or (self.period > 0 and next_iter % self.period == 0)):
            return
        means = None
        if self._metrics is not None:  # on every rank: one all_reduce inside
            means = self._metrics.measure(self.max_detections)
        if self.enabled and self._cam is not None:
            self.run()
            LoaderMetrics.put(self.trainer.storage, f"{self.tag_prefix}/validation", means)
            self._write_now()

    # ------------------------------------------------------------------ writers

    def _write_now(self) -> None:
        """Write what this pass put, through the writers given to the hook (public
        ``EventWriter.write()``, inside the trainer's ``EventStorage``)."""
        for writer in self.writers:
            writer.write()

    # ------------------------------------------------------------------ the pass

    def run(self) -> list[list[Detection]]:
        """One pass now: explain, put pictures and scalars into the trainer's storage, at
        ``storage.iter``. Returns the detections (one list per image).

        Never takes the run down (unless ``on_error="raise"``): a pass that raises is one
        warning, skipped, and marked by the scalar ``<tag_prefix>/skipped_passes`` (failed
        passes so far); after 3 in a row the hook switches itself off. Out of memory, the
        pass is retried on fewer images at a time first. Returns ``[]`` when skipped."""
        storage = self.trainer.storage
        step = int(storage.iter)

        def explain(start: int, stop: int) -> list[list[Detection]]:
            with preserve_rng():
                return self._cam.explain(
                    self.inputs[start:stop], max_detections=self.max_detections
                )

        outcome = self._guard.run_chunked(
            f"the CAM pass at iteration {step}",
            explain,
            len(self.inputs),
            then=lambda results: self._put(results, step),
        )
        if outcome.ok:
            return outcome.value
        if outcome.ran:
            failed = float(self._guard.failed_passes)
            storage.put_scalar(f"{self.tag_prefix}/skipped_passes", failed, smoothing_hint=False)
        return []

    def _put(self, results: list[list[Detection]], step: int) -> None:
        storage = self.trainer.storage
        scalars: dict[str, float] = {}
        for index, detections in enumerate(results):
            base = f"{self.tag_prefix}/image_{index:02d}"
            pictures = self._render(index, detections, step)
            pictures.update(self._film_strips(index, detections, step))
            for name, picture in pictures.items():
                tag = f"{base}/{name}"
                storage.put_image(tag, to_chw(picture))
                self.latest_images[tag] = picture
            values = self._scalars(index, detections)
            for name, value in values.items():
                scalars[f"{base}/{name}"] = value
        for tag, value in scalars.items():
            storage.put_scalar(tag, value, smoothing_hint=False)
        self.history.append({"iter": step, "scalars": scalars})

    # ------------------------------------------------------------------ numbers

    def _scalars(self, index: int, detections: list[Detection]) -> dict[str, float]:
        values: dict[str, float] = {"num_detections": float(len(detections))}
        if not detections:  # every scalar is there all the same (module docstring)
            for method in self.methods:
                nothing = self._tracker.nothing_explained()
                values.update({f"{method}/{name}": value for name, value in nothing.items()})
            return values  # the previous pass with detections stays the reference
        layer = self.layers[0]
        boxes = torch.stack([det.box for det in detections])
        classes = torch.tensor([det.class_id for det in detections])
        for method in self.methods:
            maps = torch.stack([det.maps_by_layer[layer][method] for det in detections])
            evidence = torch.tensor([det.evidence_by_layer[layer][method] for det in detections])
            tracked = self._tracker.update(
                (index, method), maps, boxes=boxes, classes=classes, evidence=evidence
            )
            values.update({f"{method}/{name}": value for name, value in tracked.items()})
        return values

    # ------------------------------------------------------------------ pictures

    def _film_strips(
        self, index: int, detections: list[Detection], step: int
    ) -> dict[str, np.ndarray]:
        """``{"<method>/filmstrip": picture}`` after adding this pass (first layer's maps)."""
        if not self.filmstrip_columns:
            return {}
        out = {}
        for method in self.methods:
            strips = self._strips.get((index, method))
            if strips is None:
                strips = DetectionFilmStrips(
                    self._pictures[index],
                    match_iou=self.match_iou,
                    max_tracks=self.max_detections,
                    max_columns=self.filmstrip_columns,
                    thumb=min(self.max_image_size, 160),
                    colormap=self.colormap,
                    alpha=self.alpha,
                )
                self._strips[(index, method)] = strips
            strips.add_pass(step, detections, self.layers[0], method)
            out[f"{method}/filmstrip"] = strips.picture(self.class_names)
        return out

    def _score_threshold(self) -> float | None:
        model = self._cam.model
        if hasattr(model, "test_score_thresh"):
            return float(model.test_score_thresh)
        predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
        value = getattr(predictor, "test_score_thresh", None)
        return float(value) if value is not None else None

    def _render(self, index: int, detections: list[Detection], step: int) -> dict[str, np.ndarray]:
        return pass_pictures(
            self._pictures[index],
            detections,
            self.layers,
            self.methods,
            step=step,
            threshold=self._score_threshold() if not detections else None,
            class_names=self.class_names,
            colormap=self.colormap,
            alpha=self.alpha,
            max_size=self.max_image_size,
        )
