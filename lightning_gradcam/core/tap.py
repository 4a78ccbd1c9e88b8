"""Gradients at a layer from a forward that somebody else runs anyway.

A whole-set measure (``GradCAMCallback(metrics_on="validation")``) explains every validation
batch. Run on its own, its forward costs as much as the user's validation forward on the same
batch, which the validation loop runs anyway. A :class:`ForwardTap` lets that forward serve
both. It is a context manager around the user's code (the ``validation_step``). While it is
open, hooks wait for the network to be called on exactly the given images. Then:

* at the layer, the output becomes a detached leaf ``A`` and grad mode is switched on, so
  autograd records only the head after the layer (the backbone before it ran with none);
* at the network's output, the scores are selected, ``G = d scores / d A`` is taken with
  ``torch.autograd.grad`` (no parameter's ``.grad`` is touched), grad mode is switched back
  off, and the caller's code receives the output detached, as its ``no_grad`` forward
  would have given it.

``observe_only=True`` touches nothing: it only records the scores the caller's forward
gave (:attr:`observed`), so that a caller can check, once, that its own pass (the head run
with autograd recording) gives the very same scores before it relies on the tap (some
kernels take another path when autograd records, e.g. attention backends).

It only acts where that changes nothing the caller can see: grad mode off (Lightning's
``fit`` validates under ``no_grad``; under ``inference_mode``, as in ``validate()``, no graph
can be recorded at all), no autocast, the network called with the very images (the
same tensor, or an equal one) and the layer run once inside that call. Anything else (a
``validation_step`` that normalises the images first, or calls a submodule, a layer run
twice, an error in the selection) leaves :attr:`result` ``None`` with the reason in
:attr:`skipped`, and the caller runs its own forward instead. Hooks are removed on exit;
grad mode is off again once the network's call ends, or, when that call raised past the
layer, as it was on entry at exit (:meth:`remove_hooks` alone touches no mode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .gradients import row_gradients

__all__ = ["ForwardTap", "Tapped"]

Select = Callable[[object], tuple]  # (scores, class_ids) or (scores, class_ids, extra)


@dataclass
class Tapped:
    """What a :class:`ForwardTap` took from the forward it watched: the layer's output
    ``activation`` (detached), its ``gradient`` ``(B, K, *activation.shape[1:])``, the
    ``scores`` ``(B, K)`` differentiated (detached), their ``class_ids``, and ``extra``:
    whatever else ``select`` gave (a segmentation score's pixel counts), or None."""

    activation: torch.Tensor
    gradient: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    extra: object = None


def _autocast_on() -> bool:
    if torch.is_autocast_enabled("cpu"):
        return True
    return torch.cuda.is_initialized() and torch.is_autocast_enabled("cuda")


def _same_images(given: object, images: torch.Tensor) -> bool:
    """Whether the network was called on ``images``: the very tensor, or an equal one. The
    measures keep CPU copies of a batch, so ``images`` may be on another device than the
    batch the step calls the network on: compared there."""
    if given is images:
        return True
    return (
        isinstance(given, torch.Tensor)
        and given.shape == images.shape
        and given.dtype == images.dtype
        and bool(torch.equal(given, images.to(given.device)))
    )


class ForwardTap:
    """Take ``layer``'s activation and the scores' gradient at it from the next call of
    ``network`` on ``images`` (module docstring); ``select(output)`` gives ``(scores,
    class_ids)``, both ``(B, K)``, or ``(scores, class_ids, extra)`` (kept as
    :attr:`Tapped.extra`).

    Example::

        select = lambda out: select_scores(out, None)  # the predicted class
        with torch.no_grad(), ForwardTap(model, model.layer4, images, select) as tap:
            logits = model(images)  # the caller's own forward; logits come back detached
        if tap.result is not None:
            activation, gradient = tap.result.activation, tap.result.gradient
    """

    def __init__(
        self,
        network: nn.Module,
        layer: nn.Module,
        images: torch.Tensor,
        select: Select,
        observe_only: bool = False,
    ):
        self.network, self.layer, self.images, self.select = network, layer, images, select
        self.observe_only = observe_only
        self.result: Tapped | None = None
        self.observed: torch.Tensor | None = None
        self.skipped: str | None = "the network was not called on the batch's images"
        self._armed = False  # inside the watched call, the layer not yet disarmed
        self._watching = False  # inside the watched call
        self._done = False
        self._activation: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._grad_mode_on_enter = False

    def __enter__(self) -> ForwardTap:
        self._grad_mode_on_enter = torch.is_grad_enabled()
        try:
            self._handles.append(self.network.register_forward_pre_hook(self._network_starts))
            self._handles.append(self.layer.register_forward_hook(self._layer_ran))
            self._handles.append(self.network.register_forward_hook(self._network_ran))
        except BaseException:
            self.remove_hooks()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove_hooks()
        if self._armed and self._activation is not None:
            # The watched call raised past the layer, where grad mode was switched on, and
            # the caller went on (it caught the error): the mode it had on entry.
            torch.set_grad_enabled(self._grad_mode_on_enter)
        self._armed = self._watching = False
        self._activation = None

    def remove_hooks(self) -> None:
        """Take the hooks off, touching nothing else: for after an exception, once the
        caller's own grad-mode contexts have unwound."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _network_starts(self, _module: nn.Module, args: tuple) -> None:
        if self._done or self._watching:
            return
        if torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            self.skipped = "the forward ran with grad mode on or under inference_mode"
        elif _autocast_on():
            self.skipped = "the forward ran under autocast"
        elif not args or not _same_images(args[0], self.images):
            self.skipped = "the network was called on other images than the batch's"
        else:
            self._watching = True
            self._armed = not self.observe_only

    def _layer_ran(self, _module: nn.Module, _inputs: tuple, output: object) -> object:
        if not self._armed:
            return None
        if self._activation is not None:
            self._disarm("the layer ran more than once in one forward")
            return None
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            self._disarm("the layer's output is not a floating-point tensor")
            return None
        torch.set_grad_enabled(True)
        self._activation = output.detach().requires_grad_()
        return self._activation.clone()  # an in-place op downstream must not change it

    def _disarm(self, reason: str) -> None:
        self._armed, self._done, self.skipped = False, True, reason
        torch.set_grad_enabled(False)

    def _observe(self, output: object) -> None:
        try:
            self.observed = self.select(output)[0].detach().clone()
        except Exception as error:
            self.skipped = f"{type(error).__name__}: {error}"
        else:
            self.skipped = None

    def _network_ran(self, _module: nn.Module, _inputs: tuple, output: object) -> object:
        if not self._watching:
            return None
        armed, activation = self._armed, self._activation
        self._armed = self._watching = False
        self._done, self._activation = True, None
        if self.observe_only:
            self._observe(output)
            return None
        try:
            if not armed:  # disarmed at the layer: the output is only handed back detached
                return pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, output)
            if activation is None:
                self.skipped = (
                    "the layer's hook did not run inside the module's call (a torch.compile'd "
                    "module runs its layers without hooks)"
                )
                return None
            try:
                scores, class_ids, *extra = self.select(output)
                gradient = row_gradients(scores, activation)
            except Exception as error:  # the caller's own pass raises it with its message
                self.skipped = f"{type(error).__name__}: {error}"
            else:
                self.result = Tapped(
                    activation.detach(), gradient, scores.detach(), class_ids, *extra[:1]
                )
                self.skipped = None
            return pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, output)
        finally:
            torch.set_grad_enabled(False)
