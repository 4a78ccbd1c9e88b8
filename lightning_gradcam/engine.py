"""CAMEngine: the classification-facing face of ``core/``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .core.capture import ActivationCapture
from .core.faithfulness import Baseline, Faithfulness, Probability, evaluate_maps, random_maps
from .core.gradients import row_gradients
from .core.guided import guided_relus, normalize_gradient_image
from .core.layers import layer_context, resolve_layer, unwrap_model
from .core.layouts import Layout, Reshape, check_reshape, detect_layout, user_layout
from .core.methods import (
    check_methods,
    compute_cam,
    get_method,
    normalize_maps,
    upsample_maps,
)
from .core.state import cam_mode, preserve_model_state
from .core.tap import ForwardTap, Tapped
from .core.targets import TargetSpec, select_scores
from .models.defaults import choose_default_layer, layout_fits, library_layout

__all__ = ["CAMEngine", "CAMResult"]

log = logging.getLogger(__name__)


@dataclass
class CAMResult:
    """What one ``CAMEngine.explain`` call found, for a batch of ``B`` images and ``K``
    targets per image.

    Attributes:
        maps: method -> ``(B, K, H, W)`` float32 in [0, 1], bilinearly upsampled to the input
            size and min-max normalised per map (a flat map is all zeros).
        layer_maps: gradient method -> ``(B, K, h, w)`` at the layer's resolution, after ReLU,
            before normalising.
        class_ids: ``(B, K)`` long, the classes explained (``-1`` for a callable target).
        scores: ``(B, K)`` float32, the exact scalars that were differentiated.
        guided: guided method -> ``(B, K, C, H, W)`` in [0, 1], the image-shaped result in
            display form (``maps`` holds its per-pixel channel maximum).
        layer: the dotted name of the layer explained.
        layout: how that layer's output was read as ``(B, C, h, w)`` (``str(layout)`` says
            which axes, the grid, the prefix tokens left out, and what decided it).
    """

    maps: dict[str, torch.Tensor]
    layer_maps: dict[str, torch.Tensor]
    class_ids: torch.Tensor
    scores: torch.Tensor
    layer: str
    guided: dict[str, torch.Tensor] = field(default_factory=dict)
    layout: Layout | None = None


def check_image_dtype(images: torch.Tensor) -> None:
    """Images are floating point, or uint8 for a model whose forward converts them."""
    if not images.is_floating_point() and images.dtype != torch.uint8:
        raise TypeError(
            f"images must be floating point, or uint8 for a model whose forward converts them "
            f"itself, got {images.dtype}"
        )


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else None


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback


class CAMEngine:
    """Grad-CAM family maps for a classifier, from one forward and one backward.

    Args:
        model: any ``nn.Module`` mapping images ``(B, C, H, W)`` to class scores ``(B, N)``
            (or a tuple/dict holding them); DDP/DataParallel/``torch.compile`` wrappers are
            looked through. Assumed: each image's output depends on that image only (true
            for CNNs in eval mode, which the CAM pass uses).
        layer: dotted name of the layer to explain (``"layer4"``, ``"features.29"``,
            ``"blocks.10"``), or ``None`` for a default found on the first call (and
            logged): the model library's last feature map (timm's ``forward_intermediates``,
            transformers' hidden states, torchvision's families), else the last block or
            stage with a spatial grid; a class-token ViT's next-to-last block (see
            ``models/defaults.py`` and ``docs/default-layers.md``).
        methods: any of ``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``hirescam``
            (all from the same forward and backward) and ``guided_backprop``,
            ``guided_gradcam``, ``guided_gradcam++`` (one more forward and backward, to the
            input), or a name added with ``lightning_gradcam.register_method``.
        reshape: a callable turning the layer's output into ``(B, C, h, w)``, for layouts
            the engine cannot tell by itself (it is applied to the gradient too). Without it
            ``(B, C, h, w)``, ``(B, h, w, C)`` and tokens ``(B, P + h*w, C)`` are recognised
            from the model and the shapes, and anything ambiguous is refused.

    The model is left exactly as found: train/eval flags, ``requires_grad``, ``.grad``, RNG
    state, BatchNorm statistics; no hook survives a call.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        methods: str | Sequence[str] = ("gradcam", "gradcam++"),
        reshape: Reshape | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.methods = check_methods(methods)
        self.layer = layer
        self.reshape = check_reshape(reshape)
        self._announce = False
        self._default_layout: Layout | None = None
        # A named layer's library layout, per (layer, input size): looked up once.
        self._library_layouts: dict[tuple[str, tuple[int, ...]], Layout | None] = {}
        if layer is not None:
            resolve_layer(model, layer)  # fail now, with close matches, not at the first call

    def _layer_for(self, network: nn.Module, images: torch.Tensor) -> str:
        if self.layer is None:
            default = choose_default_layer(network, images[:1])
            self.layer, self._default_layout = default.name, default.layout
            self._announce = True
        return self.layer

    def _layout(
        self,
        network: nn.Module,
        name: str,
        activation: torch.Tensor,
        images: torch.Tensor,
    ) -> Layout:
        if self.reshape is not None:
            return user_layout(self.reshape)
        if self._default_layout is not None and layout_fits(self._default_layout, activation):
            return self._default_layout  # the model library's own reading of this layer
        size = (int(images.shape[-2]), int(images.shape[-1]))
        key = (name, tuple(images.shape[1:]))
        if key not in self._library_layouts:  # a named layer: what the library says first
            self._library_layouts[key] = library_layout(network, name, images)
        known = self._library_layouts[key]
        if known is not None and layout_fits(known, activation):
            return known
        module, owners, parent = layer_context(network, name)
        return detect_layout(activation, name, size, module, owners, parent)

    def explain(self, images: torch.Tensor, targets: TargetSpec = None) -> CAMResult:
        """Explain ``images (B, C, H, W)``.

        Args:
            targets: ``None`` = the predicted class; an int for every image; a sequence or
                tensor ``(B,)`` of one id per image; a tensor ``(B, K)`` of K ids per image;
                ``TopK(k)``; or a callable mapping the model output to scores ``(B, K)``.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
        check_image_dtype(images)
        network = unwrap_model(self.model)
        gradient_methods = [m for m in self.methods if not get_method(m).guided]
        guided_methods = [m for m in self.methods if get_method(m).guided]
        if guided_methods and images.dtype == torch.uint8:
            raise TypeError(
                f"{', '.join(guided_methods)} back-propagate to the input pixels, which uint8 "
                "images cannot carry; pass float images (e.g. images.float() / 255 and the "
                "model's own scaling) or leave the guided methods out"
            )
        for method in guided_methods:  # guided Grad-CAM(++) multiplies by its plain map
            base = get_method(method).base
            if base is not None and base not in gradient_methods:
                gradient_methods.append(base)

        with preserve_model_state(network), cam_mode():
            # A clone made outside inference mode is an ordinary tensor, even when the
            # batch was created under torch.inference_mode() (as in Lightning's validate).
            # A uint8 pipeline (the model's forward converts its input) keeps its dtype:
            # the maps need gradients at the layer only, not at the pixels.
            dtype = images.dtype if images.dtype == torch.uint8 else _model_dtype(network)
            x = images.detach().to(
                device=_model_device(network, images.device), dtype=dtype or images.dtype
            )
            x = x.clone()
            layer_name = self._layer_for(network, x)
            layer = resolve_layer(network, layer_name)
            with (
                torch.no_grad(),
                ActivationCapture({layer_name: layer}, grad_from_layer=True) as cap,
            ):
                output = network(x)
                scores, class_ids = select_scores(output, targets)
            activation = self._single_call(cap.activations[layer_name], layer_name)
            self._check_layer_batch(activation, layer_name, x.shape[0])
            self._check_batch(scores, images.shape[0])
            gradient = row_gradients(scores, activation)  # (B, K, *activation.shape[1:])
            layer_maps, maps, layout = self._maps(
                network, layer_name, activation, gradient, x, gradient_methods
            )
            guided = {}
            if guided_methods:
                guided = self._guided(network, x, targets, class_ids, maps, guided_methods)
                for name, image in guided.items():
                    maps[name] = normalize_maps(image.amax(dim=2))
        return self._result(images, maps, layer_maps, class_ids, scores, layer_name, layout, guided)

    def tap(
        self, images: torch.Tensor, targets: TargetSpec = None, observe_only: bool = False
    ) -> ForwardTap | None:
        """A :class:`~lightning_gradcam.core.tap.ForwardTap` that takes this engine's layer
        and gradients from the caller's own next ``no_grad`` forward of the model on
        ``images``, for :meth:`explain_tapped` (``observe_only``: that only records the
        scores that forward gave); ``None`` when the layer is not known yet (a default
        layer is found by the first :meth:`explain`), a method is guided (those need a
        forward to the pixels) or a ``reshape=`` is given."""
        if self.layer is None or self.reshape is not None:
            return None
        if any(get_method(m).guided for m in self.methods):
            return None
        network = unwrap_model(self.model)
        return ForwardTap(
            network,
            resolve_layer(network, self.layer),
            images,
            lambda output: select_scores(output, targets),
            observe_only=observe_only,
        )

    def explain_tapped(self, images: torch.Tensor, tapped: Tapped) -> CAMResult:
        """What :meth:`explain` returns for ``images``, from what a :meth:`tap` took from the
        caller's forward instead of a forward of its own (the same maps: the activation and
        gradient are those that forward computed)."""
        network = unwrap_model(self.model)
        layer_name = self.layer
        activation = tapped.activation
        self._check_layer_batch(activation, layer_name, images.shape[0])
        self._check_batch(tapped.scores, images.shape[0])
        with preserve_model_state(network), cam_mode():  # a layout lookup may run the model
            layer_maps, maps, layout = self._maps(
                network, layer_name, activation, tapped.gradient, images, list(self.methods)
            )
        return self._result(
            images, maps, layer_maps, tapped.class_ids, tapped.scores, layer_name, layout, {}
        )

    def _maps(
        self,
        network: nn.Module,
        layer_name: str,
        activation: torch.Tensor,
        gradient: torch.Tensor,
        x: torch.Tensor,
        methods: list[str],
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Layout]:
        """Per method, the maps at the layer ``(B, K, h, w)`` and at the image size, and
        how the layer's output was read."""
        batch, k = gradient.shape[:2]
        layout = self._layout(network, layer_name, activation, x)
        if self._announce:
            log.info("CAMEngine: layer=None explains %r, read as %s", layer_name, layout)
            self._announce = False
        # Activations and gradients through the same layout: (B*K, C, h, w) each.
        acts = layout.to_bchw(activation.detach().float())
        acts = acts[:, None].expand(-1, k, -1, -1, -1).reshape(batch * k, *acts.shape[1:])
        grads = layout.to_bchw(gradient.float().reshape(batch * k, *activation.shape[1:]))
        if grads.shape[1:] != acts.shape[1:]:
            raise ValueError(
                f"reshape= gave activations {tuple(acts.shape[1:])} but gradients "
                f"{tuple(grads.shape[1:])} per image; it must only depend on the shape"
            )
        layer_maps = {
            m: compute_cam(m, acts, grads).reshape(batch, k, *acts.shape[-2:]) for m in methods
        }
        size = tuple(x.shape[-2:])
        maps = {
            m: normalize_maps(upsample_maps(cam, size), flat_at=cam)
            for m, cam in layer_maps.items()
        }
        return layer_maps, maps, layout

    def _result(
        self,
        images: torch.Tensor,
        maps: dict[str, torch.Tensor],
        layer_maps: dict[str, torch.Tensor],
        class_ids: torch.Tensor,
        scores: torch.Tensor,
        layer_name: str,
        layout: Layout,
        guided: dict[str, torch.Tensor],
    ) -> CAMResult:
        return CAMResult(
            maps={m: maps[m].to(images.device) for m in self.methods},
            layer_maps={m: cam.to(images.device) for m, cam in layer_maps.items()},
            class_ids=class_ids.detach().to(images.device),
            scores=scores.detach().float().to(images.device),
            layer=layer_name,
            guided={m: g.to(images.device) for m, g in guided.items()},
            layout=layout,
        )

    def faithfulness(
        self,
        images: torch.Tensor,
        result: CAMResult,
        metrics: str | Sequence[str] = ("deletion", "insertion"),
        steps: int = 16,
        baseline: Baseline = "blur",
        probability: Probability | None = None,
        random_reference: bool = True,
        seed: int = 0,
        target_index: int = 0,
        max_batch: int = 64,
    ) -> Faithfulness:
        """How faithful ``result``'s maps of ``images`` are (``core.faithfulness``): per
        method, and for a uniform random map (``"random"``, seeded, off the global RNG) as
        the reference, ``.scores[method][scalar]`` ``(B,)`` and ``.curves``.

        Explains the target ``target_index`` of each image (``result.class_ids[:, i]``);
        for a callable target pass ``probability`` returning each image's value ``(B,)``.
        Other arguments as ``core.faithfulness.evaluate_maps``.
        """
        maps = {m: cams[:, target_index] for m, cams in result.maps.items()}
        if random_reference:
            if "random" in maps:
                raise ValueError("a method named 'random' clashes with the random reference")
            batch, height, width = next(iter(maps.values())).shape
            maps["random"] = random_maps(batch, height, width, seed=seed)
        class_ids = result.class_ids[:, target_index]
        targets: torch.Tensor | None = class_ids
        if bool((class_ids < 0).any()):
            if probability is None:
                raise ValueError(
                    "the result explains a callable target, which has no class id to take "
                    "the probability of; pass probability=callable mapping the model output "
                    "to each image's value, shape (B,)"
                )
            targets = None
        return evaluate_maps(
            unwrap_model(self.model),
            images,
            maps,
            targets,
            metrics=metrics,
            steps=steps,
            baseline=baseline,
            probability=probability,
            max_batch=max_batch,
        )

    @staticmethod
    def _single_call(calls: list[torch.Tensor], layer_name: str) -> torch.Tensor:
        if not calls:
            raise RuntimeError(
                f"layer {layer_name!r} did not run during the forward pass; choose a layer "
                "on the path from the input to the class scores"
            )
        if len(calls) > 1:
            raise RuntimeError(
                f"layer {layer_name!r} ran {len(calls)} times in one forward pass (a shared "
                "module); choose a layer that runs once per image"
            )
        return calls[0]

    @staticmethod
    def _check_layer_batch(activation: torch.Tensor, layer_name: str, batch: int) -> None:
        if activation.dim() == 0 or activation.shape[0] != batch:
            raise ValueError(
                f"layer {layer_name!r} outputs shape {tuple(activation.shape)} for a batch of "
                f"{batch} images: its first axis is not the batch (the layer folds the batch "
                "with another axis, e.g. B x tokens inside a nested transformer), so its map "
                "cannot be told per image. Choose a layer whose output starts with the batch "
                "axis (a whole block or stage), or layer=None for the model's default"
            )

    @staticmethod
    def _check_batch(scores: torch.Tensor, batch: int) -> None:
        if scores.shape[0] != batch:
            raise ValueError(
                f"the targets callable returned scores for {scores.shape[0]} images, but the "
                f"batch has {batch}; it must return one row per image, shape (B, K)"
            )

    def _guided(
        self,
        network: nn.Module,
        x: torch.Tensor,
        targets: TargetSpec,
        class_ids: torch.Tensor,
        maps: dict[str, torch.Tensor],
        guided_methods: list[str],
    ) -> dict[str, torch.Tensor]:
        """Guided backpropagation to the input: ``(B, K, C, H, W)`` per guided method."""
        inputs = x.detach().requires_grad_()
        with guided_relus():
            output = network(inputs)
        same_targets = targets if callable(targets) else class_ids
        scores, _ = select_scores(output, same_targets)
        k = scores.shape[1]
        grads = [
            torch.autograd.grad(scores[:, j].sum(), inputs, retain_graph=j < k - 1)[0]
            for j in range(k)
        ]
        gradient = torch.stack(grads, dim=1).float()  # (B, K, C, H, W)
        result = {}
        for method in guided_methods:
            base = get_method(method).base
            if base is None:  # guided backpropagation alone
                result[method] = normalize_gradient_image(gradient)
            else:
                result[method] = normalize_gradient_image(gradient * maps[base][:, :, None])
        return result
