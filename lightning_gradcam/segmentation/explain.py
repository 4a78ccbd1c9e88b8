"""SegmentationCAM: one Grad-CAM family map per (image, class) of a semantic segmenter.

The scalar explained for class ``c`` of image ``b`` is Seg-Grad-CAM's (Vinogradova, Dibrov
and Myers, "Towards Interpretable Semantic Segmentation via Gradient-weighted Class
Activation Mapping", AAAI 2020): the sum of the class's logits over the pixels the model
predicts as ``c``,

    y^c = sum_{p : argmax_k L[b, k, p] = c} L[b, c, p],

at the logits' own resolution (a Hugging Face SegFormer's are 1/4 of the input's); the set
of pixels is a constant of the backward. A class the model predicts nowhere in an image has
``y^c = 0``, no gradient and no map: its record says so (``pixels == 0``, no evidence).

Gradients: image ``b``'s scores depend on row ``b`` of the activation only (eval mode), so
with ``J`` classes per image at most, the ``(B, J)`` score matrix gives every gradient from
one vectorised backward per column batch (``core.gradients.row_gradients``: one plain
backward when every image has one class).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.capture import ActivationCapture
from ..core.gradients import row_gradients
from ..core.layers import full_layer_name, layer_context, resolve_layer, unwrap_model
from ..core.layouts import Layout, Reshape, check_reshape, detect_layout, user_layout
from ..core.methods import check_methods, compute_cam, get_method, normalize_maps, upsample_maps
from ..core.state import cam_mode, preserve_model_state
from ..core.tap import ForwardTap, Tapped
from ..core.tracking import has_evidence
from ..engine import CAMEngine, _model_device, _model_dtype
from .layers import find_segmentation_layer
from .outputs import segmentation_logits

__all__ = ["Region", "SegmentationCAM", "SegmentationMaps", "ClassesSpec"]

log = logging.getLogger(__name__)

#: ``None`` (the predicted classes), one list of class ids for every image, or one per image.
ClassesSpec = Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None


@dataclass
class Region:
    """One class of one image.

    Attributes:
        class_id: the class explained.
        target_score: the scalar differentiated: the sum of the class's logits over the
            pixels predicted as it, at the logits' resolution (0.0 when there are none).
        pixels: how many pixels (at the logits' resolution) are predicted as the class.
        maps: method -> ``(H, W)`` float32 in [0, 1] at the image size (all zeros without
            evidence).
        evidence: method -> whether the map has any positive value after the ReLU.
    """

    class_id: int
    target_score: float
    pixels: int
    maps: dict[str, torch.Tensor]
    evidence: dict[str, bool] = field(default_factory=dict)


@dataclass
class SegmentationMaps:
    """The tensors behind the regions of a batch of ``B`` images, ``J`` classes at most per
    image (rows padded with ``class_ids == -1``).

    ``maps``: method -> ``(B, J, H, W)``; ``layer_maps``: method -> ``(B, J, h, w)`` after
    the ReLU, before normalising; ``class_ids``, ``pixels``: ``(B, J)`` long; ``scores``:
    ``(B, J)`` float32; ``evidence``: method -> ``(B, J)`` bool."""

    maps: dict[str, torch.Tensor]
    layer_maps: dict[str, torch.Tensor]
    class_ids: torch.Tensor
    scores: torch.Tensor
    pixels: torch.Tensor
    evidence: dict[str, torch.Tensor]
    layer: str
    layout: Layout | None = None

    def regions(self) -> list[list[Region]]:
        """One list of :class:`Region` per image, padding left out."""
        out: list[list[Region]] = []
        for b in range(self.class_ids.shape[0]):
            row = []
            for j, class_id in enumerate(self.class_ids[b].tolist()):
                if class_id < 0:
                    continue
                row.append(
                    Region(
                        class_id=int(class_id),
                        target_score=float(self.scores[b, j]),
                        pixels=int(self.pixels[b, j]),
                        maps={m: cams[b, j] for m, cams in self.maps.items()},
                        evidence={m: bool(e[b, j]) for m, e in self.evidence.items()},
                    )
                )
            out.append(row)
        return out


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """``argmax_k L[b, k, p]`` of ``logits (B, K, h, w)``: ``(B, h, w)``, detached.

    ``max(dim=1).indices`` gives the same index (the first maximal value, ties included) as
    ``argmax(dim=1)``, whose CPU kernel is slow over a non-innermost dimension: 26 ms against
    0.9 ms for 8 x 3 x 128 x 128 logits on this machine's two threads."""
    return logits.detach().max(dim=1).indices


def class_scores(
    logits: torch.Tensor, class_ids: torch.Tensor, predicted: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seg-Grad-CAM targets: ``logits (B, K, h, w)`` and ``class_ids (B, J)`` (``-1`` =
    padding) -> ``scores (B, J)``, ``sum_p L[b, c, p] [argmax_k L[b, k, p] = c]``, still
    connected to the graph, and ``pixels (B, J)``, the size of each class's predicted set.
    ``predicted``: :func:`predicted_classes` of the logits, when known already."""
    batch, k, h, w = logits.shape
    if predicted is None:
        predicted = predicted_classes(logits)  # a constant of the backward
    region = predicted[:, None] == class_ids[:, :, None, None]  # padding (-1) matches nothing
    index = class_ids.clamp_min(0)[:, :, None, None].expand(-1, -1, h, w)
    chosen = logits.gather(1, index)  # (B, J, h, w)
    scores = (chosen * region).sum(dim=(-2, -1))
    return scores, region.sum(dim=(-2, -1))


def _class_lists(
    classes: ClassesSpec, predicted: torch.Tensor, background: int | None, num_classes: int
) -> list[list[int]]:
    batch = predicted.shape[0]
    if classes is None:
        lists = [torch.unique(predicted[b]).tolist() for b in range(batch)]
        return [[c for c in row if c != background] for row in lists]
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    if isinstance(classes, int):
        classes = [classes]
    items = list(classes)
    if all(isinstance(c, int) for c in items):
        lists = [list(items) for _ in range(batch)]
    elif all(isinstance(c, (Sequence, torch.Tensor)) and not isinstance(c, str) for c in items):
        if len(items) != batch:
            raise ValueError(
                f"classes gives {len(items)} lists of class ids for {batch} images; pass one "
                "list per image, or one list of ids for every image"
            )
        lists = [c.tolist() if isinstance(c, torch.Tensor) else list(c) for c in items]
    else:
        raise TypeError(
            "classes must be None (the predicted classes), a list of class ids for every "
            f"image, or one such list per image; got {classes!r}"
        )
    for row in lists:
        bad = [c for c in row if not isinstance(c, int) or not 0 <= c < num_classes]
        if bad:
            raise ValueError(
                f"class ids {bad} are not in 0..{num_classes - 1} (the model predicts "
                f"{num_classes} classes)"
            )
    return [list(dict.fromkeys(row)) for row in lists]


def _padded(lists: list[list[int]]) -> torch.Tensor:
    """``(B, J)`` class ids, rows padded with ``-1`` to the longest list."""
    width = max((len(row) for row in lists), default=0)
    class_ids = torch.full((len(lists), width), -1, dtype=torch.long)
    for b, row in enumerate(lists):
        class_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return class_ids


def _refuse_dict_layer(name: str, module: nn.Module) -> None:
    """torchvision's ``IntermediateLayerGetter`` returns a dict of feature maps, which no
    hook can read as one: name its child instead."""
    returned = getattr(module, "return_layers", None)
    if isinstance(returned, dict) and returned:
        children = ", ".join(f"'{name}.{child}' ({key})" for child, key in returned.items())
        raise ValueError(
            f"layer {name!r} returns a dict of feature maps ({returned}); name the one to "
            f"explain: {children}"
        )


class SegmentationCAM:
    """Grad-CAM family maps for a semantic segmenter, one per (image, class).

    Args:
        model: maps images ``(B, C, H, W)`` to class logits: torchvision FCN / DeepLabV3 /
            LR-ASPP (``{"out": (B, K, H, W)}``), Hugging Face ``...ForSemanticSegmentation``
            (``.logits``, e.g. at 1/4 resolution), or a plain ``(B, K, h, w)`` tensor.
            Wrappers (DDP, ``torch.compile``) are looked through.
        layer: dotted name of the layer to explain, or ``None``: the last feature map
            before the segmentation head (``segmentation.layers``), logged on first use.
        methods: ``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``hirescam`` or a
            registered method; guided methods are not offered for segmentation. The
            default leaves Grad-CAM++ out: its closed form assumes the exponential of one
            logit, and for a sum over many pixels (``S_k G >> 2``) its weights become
            ``~ |R| / sum_ab A_k`` for every channel with a positive gradient, whatever the
            channel's part in the class: on the shapes segmenter of docs/segmentation.md its
            maps put no more in the mask than a uniform map does.
        reshape: a callable turning the layer's output into ``(B, C, h, w)``.

    The model is left as found (modes, ``requires_grad``, ``.grad``, RNG, BatchNorm
    statistics); no hook survives a call.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        methods: str | Sequence[str] = ("gradcam", "hirescam"),
        reshape: Reshape | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.methods = check_methods(methods)
        guided = [m for m in self.methods if get_method(m).guided]
        if guided:
            raise ValueError(
                f"methods {guided} back-propagate to the input (guided); SegmentationCAM "
                "offers the gradient methods only: gradcam, gradcam++, xgradcam, layercam, "
                "hirescam"
            )
        self.reshape = check_reshape(reshape)
        self.layer = None if layer is None else full_layer_name(model, layer)
        if self.layer is not None:
            _refuse_dict_layer(self.layer, resolve_layer(model, self.layer))
        self.layout: Layout | None = None
        self._default_layout: Layout | None = None

    def _layer_for(self, network: nn.Module, x: torch.Tensor) -> str:
        if self.layer is None:
            name, layout, why = find_segmentation_layer(network, lambda: network(x[:1]))
            self.layer, self._default_layout = name, layout
            log.info("SegmentationCAM: layer=None explains %r (%s)", name, why)
        return self.layer

    def _layout(self, network: nn.Module, activation: torch.Tensor, size) -> Layout:
        if self.reshape is not None:
            return user_layout(self.reshape)
        if self._default_layout is not None:
            return self._default_layout
        module, owners, parent = layer_context(network, self.layer)
        return detect_layout(activation, self.layer, size, module, owners, parent)

    def explain(
        self, images: torch.Tensor, classes: ClassesSpec = None, background: int | None = 0
    ) -> list[list[Region]]:
        """One list of :class:`Region` per image of ``images (B, C, H, W)``.

        Args:
            classes: ``None``: every class the model predicts in the image but
                ``background``; a list of class ids: those, in every image (a class not
                predicted there gets a record with ``pixels == 0`` and no map); one list
                per image.
            background: the class left out when ``classes`` is None (``None``: none).
        """
        return self.explain_maps(images, classes, background).regions()

    def explain_maps(
        self, images: torch.Tensor, classes: ClassesSpec = None, background: int | None = 0
    ) -> SegmentationMaps:
        """As :meth:`explain`, as batched tensors (:class:`SegmentationMaps`)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point, got {images.dtype}")
        network = unwrap_model(self.model)
        with preserve_model_state(network), cam_mode():
            x = images.detach().to(
                device=_model_device(network, images.device),
                dtype=_model_dtype(network) or images.dtype,
            )
            x = x.clone()  # an ordinary tensor even when made under inference_mode
            name = self._layer_for(network, x)
            with (
                torch.no_grad(),
                ActivationCapture(
                    {name: resolve_layer(network, name)}, grad_from_layer=True
                ) as cap,
            ):
                logits = segmentation_logits(network(x))
                predicted = predicted_classes(logits)
                lists = _class_lists(classes, predicted, background, logits.shape[1])
                class_ids = _padded(lists).to(logits.device)
                width = class_ids.shape[1]
                scores, pixels = class_scores(logits, class_ids, predicted)
            activation = CAMEngine._single_call(cap.activations[name], name)
            if width == 0:
                return self._maps(network, activation, None, class_ids, scores, pixels, images)
            gradient = row_gradients(scores, activation)  # (B, J, *activation.shape[1:])
            return self._maps(network, activation, gradient, class_ids, scores, pixels, images)

    def tap(
        self, images: torch.Tensor, classes: Sequence[Sequence[int]], observe_only: bool = False
    ) -> ForwardTap | None:
        """A :class:`~lightning_gradcam.core.tap.ForwardTap` that takes the layer and the
        gradients of ``classes`` (one list of class ids per image) from the caller's own next
        ``no_grad`` forward of the model on ``images``, for :meth:`explain_tapped`
        (``observe_only``: it only records the scores that forward gave); ``None`` while the
        layer is not known (a default layer is found by the first explain)."""
        if self.layer is None:
            return None
        network = unwrap_model(self.model)

        def select(output: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits = segmentation_logits(output)
            predicted = predicted_classes(logits)
            lists = _class_lists(classes, predicted, None, logits.shape[1])
            class_ids = _padded(lists).to(logits.device)
            scores, pixels = class_scores(logits, class_ids, predicted)
            return scores, class_ids, pixels

        return ForwardTap(network, resolve_layer(network, self.layer), images, select, observe_only)

    def explain_tapped(self, images: torch.Tensor, tapped: Tapped) -> SegmentationMaps:
        """What :meth:`explain_maps` returns for ``images`` and the classes a :meth:`tap`
        was given, from what that tap took from the caller's forward (the same maps: the
        activation and gradient are those that forward computed)."""
        network = unwrap_model(self.model)
        with cam_mode():  # the model is not run: its layers' output is read off `tapped`
            return self._maps(
                network,
                tapped.activation,
                tapped.gradient,
                tapped.class_ids,
                tapped.scores,
                tapped.extra,
                images,
            )

    def _maps(
        self,
        network: nn.Module,
        activation: torch.Tensor,
        gradient: torch.Tensor | None,
        class_ids: torch.Tensor,
        scores: torch.Tensor,
        pixels: torch.Tensor,
        images: torch.Tensor,
    ) -> SegmentationMaps:
        """The maps of ``class_ids (B, J)`` from the layer's ``activation`` and the scores'
        ``gradient (B, J, ...)`` at it (None when ``J == 0``)."""
        name, size = self.layer, tuple(images.shape[-2:])
        self.layout = layout = self._layout(network, activation, size)
        batch, width = class_ids.shape
        if gradient is None or width == 0:
            empty = torch.zeros((batch, 0, *size))
            return SegmentationMaps(
                {m: empty for m in self.methods},
                {m: empty for m in self.methods},
                class_ids.cpu(),
                scores.detach().float().cpu(),
                pixels.cpu(),
                {m: torch.zeros((batch, 0), dtype=torch.bool) for m in self.methods},
                name,
                layout,
            )
        acts = layout.to_bchw(activation.detach().float())
        acts = acts[:, None].expand(-1, width, -1, -1, -1).reshape(-1, *acts.shape[1:])
        grads = layout.to_bchw(gradient.float().reshape(batch * width, *activation.shape[1:]))
        layer_maps = {
            m: compute_cam(m, acts, grads).reshape(batch, width, *acts.shape[-2:])
            for m in self.methods
        }
        maps = {
            m: normalize_maps(upsample_maps(cam, size), flat_at=cam).to(images.device)
            for m, cam in layer_maps.items()
        }
        evidence = {
            m: has_evidence(cam.reshape(batch * width, *cam.shape[-2:])).reshape(batch, width)
            for m, cam in layer_maps.items()
        }
        return SegmentationMaps(
            maps=maps,
            layer_maps={m: cam.to(images.device) for m, cam in layer_maps.items()},
            class_ids=class_ids.to(images.device),
            scores=scores.detach().float().to(images.device),
            pixels=pixels.to(images.device),
            evidence={m: e.to(images.device) for m, e in evidence.items()},
            layer=name,
            layout=layout,
        )
