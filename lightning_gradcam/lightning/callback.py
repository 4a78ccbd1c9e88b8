"""GradCAMCallback: watch where a Lightning model looks, and how that moves, while it trains.

One class serves ``pytorch_lightning.Trainer`` and ``lightning.pytorch.Trainer``: it derives
from the ``Callback`` base of every installed Lightning package (see ``compat``).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.faithfulness import check_metrics, mean_scalars
from ..core.layers import full_layer_name, resolve_layer, unwrap_model
from ..core.layouts import check_reshape
from ..core.methods import check_methods
from ..core.render import colormap_code, to_uint8_image
from ..core.resilience import (
    PassGuard,
    check_on_error,
    concat_batches,
    run_in_chunks,
)
from ..core.state import preserve_rng
from ..core.tracking import DriftTracker, has_evidence
from ..engine import CAMEngine, CAMResult
from ..pictures import SamplePictures, evidence_text, sheet
from .arguments import (
    channel_stats,
    check_model,
    check_samples,
    check_target,
    optional_size,
    positive_int,
)
from .batch import SampleCollector, Samples, default_batch_parser, make_samples, to_samples
from .compat import CALLBACK_BASES, sharded_strategy_name
from .explained import ForwardWatch, explained_network, not_callable_on_images
from .sinks import Sink, sinks_for

__all__ = ["GradCAMCallback"]

_STATE_VERSION = 1


def _first_loader(loaders: object) -> object | None:
    """The first validation dataloader of ``trainer.val_dataloaders`` (one, a list or a dict)."""
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def _images_digest(images: torch.Tensor) -> str:
    digest = hashlib.sha1(str(tuple(images.shape)).encode())
    digest.update(images.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


class GradCAMCallback(*CALLBACK_BASES):
    """Explain a fixed set of images after validation epochs and log the maps to TensorBoard.

    Usage: ``Trainer(callbacks=[GradCAMCallback(layer="net.layer4")])`` with either
    ``pytorch_lightning`` or ``lightning.pytorch``. The module explained (the LightningModule,
    or the network ``model=`` names) must map images ``(B, C, H, W)`` to class scores
    ``(B, num_classes)`` (or pass ``target`` as a callable that picks the scores from its
    output).

    Mistakes fail before the first optimizer step: a trial pass runs on the first validation
    images (after the sanity check, or before the first training batch without one), or on
    the first training batch when there is no validation. After that a pass that raises is
    skipped with one warning and training goes on (see ``on_error``).

    Args:
        layer: dotted name of the layer to explain, relative to the module explained
            (``"net.layer4"``, or ``"layer4"`` with ``model="net"``; an unambiguous suffix
            works too), or ``None`` for a default: a CNN's last spatial 4-D output, a ViT's
            last block's first norm, a Swin's last stage (``docs/layouts.md``). A wrong name
            fails at ``on_fit_start``, before any training step, listing close matches. Tags
            use the layer's full name however it was given.
        reshape: a callable turning the layer's output into ``(B, C, h, w)`` (applied to
            its gradient too), for layouts the engine cannot tell by itself; ``(B, C, h, w)``,
            ``(B, h, w, C)`` and ViT tokens ``(B, P + h*w, C)`` need none.
        methods: one or more of ``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``,
            ``hirescam``, ``guided_backprop``, ``guided_gradcam``, ``guided_gradcam++``, or a
            name added with ``lightning_gradcam.register_method``.
        num_samples: how many images to explain (the first ones of the first validation
            batches of the first validation dataloader, or of ``images``).
        every_n_epochs: explain after every n-th validation run inside ``fit`` (after every
            n-th training epoch when the fit has no validation loop).
        target: which class each image's map explains, fixed for the whole run:
            ``"auto"`` (the label when labels are known, else the prediction at the first
            CAM epoch), ``"label"``, ``"prediction"`` (at the first CAM epoch), a class id for
            all images, a sequence of one class id per image, or a callable mapping the
            model output to scores ``(B,)`` / ``(B, 1)``.
        images: explain these images ``(N, C, H, W)`` instead of validation images.
        labels: ``(N,)`` class ids of ``images``.
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` pixel box of the deciding object in each of
            ``images``; enables the ``energy_in_box`` scalar and boxes in the pictures.
        masks: ``(N, H, W)`` boolean masks of the deciding object (same use as ``boxes``).
        batch_parser: callable mapping a validation batch to images, ``(images, labels)`` or
            a dict with ``images`` and optionally ``labels``, ``boxes``, ``masks``. Default:
            a tensor, an ``(images, labels)`` pair, or a dict with an image key.
        mean, std: per-channel normalisation of the images, undone for display
            (``x * std + mean``); without them images outside [0, 1] are min-max scaled.
        colormap: ``jet``, ``turbo``, ``inferno``, ``viridis``, ``magma``, ``hot`` or an
            OpenCV ``COLORMAP_*`` constant.
        alpha: heat-map weight in the overlay, in [0, 1].
        tag_prefix: first part of every TensorBoard tag (and the PNG folder's name).
        max_image_size: longer side, in pixels, of each logged picture (larger are shrunk);
            ``None`` keeps the input size.
        class_names: names for class ids in captions.
        filmstrip_size: thumbnail size kept in memory for ``filmstrip()`` (rows = samples,
            columns = CAM epochs); ``None`` keeps none.
        faithfulness: any of ``deletion``, ``insertion``, ``average_drop``,
            ``increase_in_confidence`` (``core.faithfulness``; default none): logged per
            method as ``<p>/<method>/deletion_auc``, ``insertion_auc``, ``average_drop``,
            ``increase_in_confidence`` (means over the images; a flat map is left out), and
            the same for a seeded uniform random map, ``<p>/random/...``, as the reference.
            Probability = softmax of the class scores; with a callable ``target`` its value
            is followed as is. No-grad forwards in eval mode, leaving no trace.
        model: what to explain when it is not the LightningModule itself (whose
            ``forward`` takes a batch dict, or which keeps its network in an attribute): an
            attribute path (``"model"``, ``"net.backbone"``) or a callable
            ``pl_module -> nn.Module``; its forward must map images to class scores.
        on_error: ``"warn"``: after the trial pass, a pass that raises is skipped with a
            one-line warning, marked by the scalar ``<p>/skipped_passes`` (failed passes so
            far) at its step, and training goes on; after 3 failed passes in a row the
            callback switches itself off with a warning. Out of memory, the pass is first
            retried on halves of the images, down to one. ``"raise"``: the error stops the
            run.

    Logged per CAM epoch, at ``global_step`` (``<p>`` = ``<tag_prefix>/<layer>``):
    ``<p>/inputs`` (once), ``<p>/<method>/sample_NN``, ``<p>/<method>/grid``, and the scalars
    ``<p>/<method>/drift_vs_prev``, ``drift_vs_first`` (``core.drift.map_drift``, averaged
    over the images) and ``energy_in_box`` (when boxes or masks are known). An image whose
    map is zero everywhere after the ReLU is captioned "no positive evidence" (the input
    without overlay) and left out of those scalars. A last pass runs at the end of ``fit``
    when the last one was not at the final ``global_step``. Pictures and scalars go to every
    logger that takes them (TensorBoard, W&B with captions, MLflow, CSVLogger); without one,
    PNGs and ``scalars.csv`` under ``<trainer.log_dir>/<tag_prefix>``; nothing at all under
    ``fast_dev_run``.

    After training, ``history`` lists one dict per CAM epoch of this process (``epoch``,
    ``step``, ``scalars`` ``{method: {name: value}}``, ``thumbs``) and ``filmstrip(method)``
    draws them. Only global rank zero computes; sharded strategies are refused.
    """

    def __init__(
        self,
        layer: str | None = None,
        methods: str | Sequence[str] = ("gradcam", "gradcam++"),
        num_samples: int = 8,
        every_n_epochs: int = 1,
        target: str | int | Sequence[int] | Callable[[Any], torch.Tensor] = "auto",
        images: torch.Tensor | None = None,
        labels: torch.Tensor | Sequence[int] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        batch_parser: Callable[[Any], Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        colormap: str | int = "jet",
        alpha: float = 0.5,
        tag_prefix: str = "gradcam",
        max_image_size: int | None = 256,
        class_names: Sequence[str] | None = None,
        filmstrip_size: int | None = 96,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        faithfulness: str | Sequence[str] = (),
        model: str | Callable[[Any], nn.Module] | None = None,
        on_error: str = "warn",
    ):
        if layer is not None and (not isinstance(layer, str) or not layer.strip()):
            raise ValueError(
                f"layer must be a dotted module name such as 'layer4' or None, got {layer!r}"
            )
        self.layer = layer
        self.methods = check_methods(methods)
        self.num_samples = positive_int(num_samples, "num_samples")
        self.every_n_epochs = positive_int(every_n_epochs, "every_n_epochs")
        self.target = check_target(target)
        if batch_parser is not None and not callable(batch_parser):
            raise TypeError(f"batch_parser must be callable, got {type(batch_parser).__name__}")
        self.batch_parser = batch_parser or default_batch_parser
        self.mean = channel_stats(mean, "mean")
        self.std = channel_stats(std, "std")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.mean and self.std and len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} channels but std has {len(self.std)}; give one "
                "value per image channel to both"
            )
        colormap_code(colormap)  # raises with the list of names
        self.colormap = colormap
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        if not isinstance(tag_prefix, str) or not tag_prefix.strip("/ "):
            raise ValueError(f"tag_prefix must be a non-empty string, got {tag_prefix!r}")
        self.tag_prefix = tag_prefix.strip("/ ")
        self.max_image_size = optional_size(max_image_size, "max_image_size")
        self.filmstrip_size = optional_size(filmstrip_size, "filmstrip_size")
        self.reshape = check_reshape(reshape)
        if class_names is not None and (
            isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names)
        ):
            raise ValueError("class_names must be a sequence of strings, one per class id")
        self.class_names = tuple(class_names) if class_names is not None else None
        self.faithfulness = check_metrics(faithfulness)

        self._user_samples = images is not None
        if images is None and any(v is not None for v in (labels, boxes, masks)):
            raise ValueError(
                "labels, boxes and masks describe the images passed as images=...; pass "
                "images too, or return them from batch_parser for validation images"
            )
        self._samples: Samples | None = None
        if images is not None:
            samples = make_samples(images, labels, boxes, masks).head(self.num_samples)
            self._set_samples(samples)
        self._collector = SampleCollector(self.num_samples, self.batch_parser)

        self.model = check_model(model)
        self.on_error = check_on_error(on_error)
        self._guard = PassGuard("GradCAMCallback", self.on_error)
        self._last_step: int | None = None

        self._layer_name: str | None = layer
        self._trial_done = False
        self._targets: torch.Tensor | None = None
        # One key per method: the same samples at each pass; maps without positive evidence
        # are left out of drift and energy, not counted as 0.
        self._tracker = DriftTracker(leave_out_empty=True)
        self._eval_count = 0
        self._cam_count = 0
        self._inputs_logged = False
        self._sink: Sink | None = None
        self._warned: set[str] = set()
        self.history: list[dict[str, Any]] = []

    def _set_samples(self, samples: Samples) -> None:
        check_samples(samples, self.target, self.mean, self.std)
        self._samples = samples

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            layer=self.layer, methods=self.methods, tag_prefix=self.tag_prefix
        )

    # ------------------------------------------------------------------ Lightning hooks

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        sharded = sharded_strategy_name(trainer.strategy)
        if sharded is not None:
            raise RuntimeError(
                f"GradCAMCallback does not support the sharded strategy {sharded}: a CAM pass "
                "runs on global rank zero only, but a sharded model needs every rank in each "
                "forward pass. Use strategy='ddp' (or a single device) for runs you explain."
            )
        network = self._network(pl_module)
        if self.layer is not None:
            resolve_layer(network, self.layer)  # LayerNotFoundError, with close matches
            self._layer_name = full_layer_name(network, self._layer_name or self.layer)
        self._guard = PassGuard("GradCAMCallback", self.on_error)  # a fresh count per fit
        self._last_step = None
        if self._samples is not None:
            self._set_samples(self._samples)
            if trainer.is_global_zero:
                self._trial_pass(pl_module)
        # Every logger that can take pictures (sinks.sinks_for). trainer.log_dir broadcasts
        # under DDP: compute it here, where every rank runs.
        zero = trainer.is_global_zero
        self._sink = sinks_for(
            trainer.loggers,
            trainer.log_dir or trainer.default_root_dir,
            subdir=self.tag_prefix,
            dry_run=bool(trainer.fast_dev_run),
            warn=lambda message: self._warn_once("no_logger", message) if zero else None,
        )

    def _network(self, pl_module: Any) -> nn.Module:
        return explained_network(pl_module, self.model)

    def _skip_outside_fit(self, trainer: Any) -> bool:
        if trainer.state.fn == "fit":
            return False
        if trainer.is_global_zero:
            self._warn_once(
                "not_fit",
                f"GradCAMCallback runs inside trainer.fit() only; skipped for "
                f"trainer.{getattr(trainer.state.fn, 'value', trainer.state.fn)}() (explain a "
                "model outside training with lightning_gradcam.CAMEngine).",
            )
        return True

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._skip_outside_fit(trainer)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._skip_outside_fit(trainer)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._skip_outside_fit(trainer)

    def _take(self, batch: object) -> None:
        if self._samples is None and self._collector.wants_more:
            self._collector.add(batch)
            if not self._collector.wants_more:
                self._finish_taking()

    def _finish_taking(self) -> None:
        samples = self._collector.collect()
        if samples is not None and self._samples is None:
            self._set_samples(samples)

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.state.fn != "fit" or not trainer.is_global_zero or dataloader_idx != 0:
            return
        self._take(batch)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # No sanity check ran (num_sanity_val_steps=0, fast_dev_run): take the validation
        # images now, from the first validation dataloader, for the trial pass before the
        # first optimizer step.
        if self._trial_done or not trainer.is_global_zero or not trainer.enable_validation:
            return
        if self._samples is None:
            self._take_from_validation(trainer)
        if self._samples is not None:
            self._trial_pass(pl_module)

    def _take_from_validation(self, trainer: Any) -> None:
        loader = _first_loader(trainer.val_dataloaders)
        if loader is None:
            return  # not set up yet: the trial uses the first training batch instead
        with preserve_rng():  # a fresh iterator draws a seed: not from the run's streams
            self._collector.add_from(loader)
        self._finish_taking()

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        if not trainer.enable_validation:
            # Without a validation loop the images come from the first training batch.
            if self._samples is None:
                self._take(batch)
                self._finish_taking()
            if self._samples is not None:
                self._trial_pass(pl_module)
        elif not self._trial_done and self._samples is None:
            # Validation images not known yet: try the first training batch's images.
            self._trial_pass(pl_module, to_samples(self.batch_parser(batch)).head(self.num_samples))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn != "fit":
            return
        self._finish_taking()
        if trainer.sanity_checking:
            if trainer.is_global_zero and self._samples is not None:
                self._trial_pass(pl_module)
            return
        self._evaluation_point(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.enable_validation:
            return  # explained after validation instead
        self._finish_taking()
        self._evaluation_point(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # The weights the fit ends with (max_steps, max_time, early stopping, or an epoch
        # count that every_n_epochs skips) are explained too. Not reached after an exception.
        if trainer.state.fn != "fit" or not trainer.is_global_zero or self._samples is None:
            return
        if self._trial_done and self._last_step != int(trainer.global_step):
            self._explain_and_log(trainer, pl_module)

    def _evaluation_point(self, trainer: Any, pl_module: Any) -> None:
        self._eval_count += 1  # on every rank, so the count in any checkpoint is right
        if self._eval_count % self.every_n_epochs or not trainer.is_global_zero:
            return
        if self._samples is None:
            self._warn_once(
                "no_images",
                "GradCAMCallback has no images to explain (the validation loop produced no "
                "batch); pass images=... to the callback",
            )
            return
        self._explain_and_log(trainer, pl_module)

    # ------------------------------------------------------------------ the CAM pass

    def _target_spec(self, samples: Samples) -> object:
        if self._targets is not None:
            return self._targets
        if callable(self.target) and not isinstance(self.target, torch.Tensor):
            return self.target
        if isinstance(self.target, torch.Tensor):
            return self.target
        if isinstance(self.target, int) and not isinstance(self.target, bool):
            return self.target
        labels = samples.labels
        if self.target == "label" or (self.target == "auto" and labels is not None):  # str here
            return labels
        return None  # the prediction, fixed after this first CAM pass

    def _get_sink(self) -> Sink:
        return self._sink

    def _explain(
        self, pl_module: Any, samples: Samples, start: int = 0, stop: int | None = None
    ) -> CAMResult:
        """The maps of ``samples[start:stop]`` (a chunk, when memory runs short)."""
        network = self._network(pl_module)
        engine = CAMEngine(
            network, layer=self._layer_name, methods=self.methods, reshape=self.reshape
        )
        spec = self._target_spec(samples)
        if isinstance(spec, torch.Tensor):
            spec = spec[start:stop]
        result = engine.explain(samples.images[start:stop], targets=spec)
        self._layer_name = full_layer_name(network, result.layer)  # tags: the full name
        if result.scores.shape[1] != 1:
            raise ValueError(
                f"the target callable returned {result.scores.shape[1]} scores per image; "
                "GradCAMCallback tracks one fixed target per image, so return shape (B,) or (B, 1)"
            )
        return result

    def _trial_pass(self, pl_module: Any, samples: Samples | None = None) -> None:
        """One unlogged CAM pass before the first optimizer step, on the images to explain
        (or, while those are not known yet, on ``samples``): a model, batch, output or
        target that cannot be explained fails at step 0, never later. Not guarded."""
        if self._trial_done:
            return
        samples = self._samples if samples is None else samples
        network = self._network(pl_module)
        try:
            with ForwardWatch(unwrap_model(network)) as watch:
                run_in_chunks(
                    lambda start, stop: self._explain(pl_module, samples, start, stop),
                    len(samples),
                    concat_batches,
                )
        except Exception as error:
            if watch.failed_inside(error):
                raise not_callable_on_images(network, samples.images.shape, error) from error
            if hasattr(error, "add_note"):  # Python 3.11+
                error.add_note(
                    "GradCAMCallback: the trial CAM pass before training failed; fix the "
                    "callback's layer/target/model (or the model's output) before training."
                )
            raise
        self._trial_done = True

    def _explain_and_log(self, trainer: Any, pl_module: Any) -> None:
        """One guarded pass: compute (in chunks on out-of-memory), draw, log. A failure is
        a one-line warning and a ``skipped_passes`` mark, never the end of the run (unless
        ``on_error="raise"``)."""
        step = int(trainer.global_step)
        samples = self._samples
        self._last_step = step
        outcome = self._guard.run_chunked(
            f"the CAM pass at step {step}",
            lambda start, stop: self._explain(pl_module, samples, start, stop),
            len(samples),
            then=lambda result: self._log_pass(trainer, pl_module, result),
        )
        if outcome.ran and not outcome.ok:
            self._mark_skipped(step)

    def _mark_skipped(self, step: int) -> None:
        try:  # the sink itself may be what failed
            sink = self._get_sink()
            sink.scalar(
                f"{self.tag_prefix}/{self._layer_name}/skipped_passes",
                float(self._guard.failed_passes),
                step,
            )
            sink.flush()
        except Exception:
            pass

    def _log_pass(self, trainer: Any, pl_module: Any, result: CAMResult) -> None:
        samples = self._samples
        if self._targets is None and not callable(self.target):
            self._targets = result.class_ids[:, 0].clone()
        maps = {m: result.maps[m][:, 0].float().cpu() for m in self.methods}
        # Evidence at the layer's resolution, after the ReLU, before normalising.
        evidence = {
            m: has_evidence(result.layer_maps[m][:, 0] if m in result.layer_maps else maps[m])
            for m in self.methods
        }
        step = int(trainer.global_step)
        epoch = int(trainer.current_epoch)
        pictures = self._pictures()
        prefix = f"{self.tag_prefix}/{self._layer_name}"
        faith = self._faithfulness(pl_module, result)  # {} without faithfulness=...
        texts = pictures.score_texts(result.class_ids[:, 0], result.scores[:, 0])

        # Everything is drawn and computed before anything is written.
        images: list[tuple[str, np.ndarray, str | None]] = []
        scalars: list[tuple[str, float]] = []
        if not self._inputs_logged:
            images.append((f"{prefix}/inputs", pictures.inputs(self.max_image_size), None))
        thumbs: dict[str, list[np.ndarray]] = {}
        logged: dict[str, dict[str, float]] = {}
        for method, method_maps in maps.items():
            flags = evidence[method].tolist()
            tiles = pictures.tiles(method_maps, texts, self.max_image_size, flags)
            for index, tile in enumerate(tiles):
                text = evidence_text(texts[index], flags[index])
                images.append(
                    (f"{prefix}/{method}/sample_{index:02d}", tile, f"{text}, step {step}")
                )
            images.append((f"{prefix}/{method}/grid", sheet(tiles), None))
            logged[method] = self._tracker.update(
                method,
                method_maps,
                boxes=samples.boxes,
                masks=samples.masks,
                evidence=evidence[method],
            ) | faith.get(method, {})
            scalars += [(f"{prefix}/{method}/{k}", v) for k, v in logged[method].items()]
            if self.filmstrip_size is not None:
                captions = [f"ep {epoch}"] * len(samples)
                thumbs[method] = pictures.tiles(method_maps, captions, self.filmstrip_size, flags)
        if "random" in faith:
            logged["random"] = faith["random"]
            scalars += [(f"{prefix}/random/{k}", v) for k, v in faith["random"].items()]

        sink = self._get_sink()
        for tag, image, caption in images:
            sink.image(tag, image, step, caption=caption)
        for tag, value in scalars:
            sink.scalar(tag, value, step)
        sink.flush()
        self._inputs_logged = True
        self._cam_count += 1
        self.history.append({"epoch": epoch, "step": step, "scalars": logged, "thumbs": thumbs})

    def _faithfulness(self, pl_module: Any, result: CAMResult) -> dict[str, dict[str, float]]:
        if not self.faithfulness:
            return {}
        probability = None
        if callable(self.target) and not isinstance(self.target, torch.Tensor):
            probability = self.target  # the callable's value per image, (B,) or (B, 1)
        engine = CAMEngine(self._network(pl_module), layer=self._layer_name, methods=self.methods)
        measured = engine.faithfulness(
            self._samples.images, result, self.faithfulness, probability=probability
        )
        return mean_scalars(measured)

    # ------------------------------------------------------------------ pictures

    def _pictures(self) -> SamplePictures:
        samples = self._samples
        return SamplePictures(
            [to_uint8_image(img, self.mean, self.std) for img in samples.images],
            samples.boxes,
            samples.labels,
            self.class_names,
            self.colormap,
            self.alpha,
        )

    def filmstrip(self, method: str | None = None) -> np.ndarray:
        """Rows = samples, columns = the input, then one overlay per CAM epoch (oldest
        first), as ``uint8 (H, W, 3)`` RGB. ``method`` defaults to the first one."""
        method = method or self.methods[0]
        if method not in self.methods:
            raise ValueError(f"method {method!r} was not computed; choose from {self.methods}")
        if not self.history or self._samples is None or self.filmstrip_size is None:
            raise RuntimeError(
                "no CAM epoch has run yet (or filmstrip_size=None): train with the callback first"
            )
        passes = [entry["thumbs"][method] for entry in self.history]
        return self._pictures().film_strip(passes, self.filmstrip_size)

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        samples = self._samples
        return {
            "version": _STATE_VERSION,
            "layer": self._layer_name,
            "eval_count": self._eval_count,
            "cam_count": self._cam_count,
            "inputs_logged": self._inputs_logged,
            "images_digest": None if samples is None else _images_digest(samples.images),
            "samples": None
            if samples is None
            else dict(zip(("images", "labels", "boxes", "masks"), samples.fields())),
            "targets": self._targets,
            # {method: (N, H, W)}: the tracker's first and previous maps
            **{k: v for k, v in self._tracker.state_dict().items() if k.endswith("_maps")},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            self._warn_once(
                "state_version",
                f"GradCAMCallback: ignoring checkpoint state of version "
                f"{state_dict.get('version')!r} (expected {_STATE_VERSION}); drift restarts",
            )
            return
        self._eval_count = int(state_dict["eval_count"])
        self._cam_count = int(state_dict["cam_count"])
        saved = state_dict["samples"]
        if saved is None:
            return
        if self._samples is not None and self._user_samples:
            if _images_digest(self._samples.images) != state_dict["images_digest"]:
                self._warn_once(
                    "other_images",
                    "GradCAMCallback: the images passed now differ from those in the "
                    "checkpoint; the drift series restarts from these images",
                )
                return
        else:
            self._set_samples(make_samples(**saved))
        self._layer_name = state_dict["layer"] or self._layer_name
        self._inputs_logged = bool(state_dict["inputs_logged"])
        self._targets = state_dict["targets"]
        self._tracker.load_state_dict(
            {"first_maps": state_dict["first_maps"], "prev_maps": state_dict["prev_maps"]}
        )
