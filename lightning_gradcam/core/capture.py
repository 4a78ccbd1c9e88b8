"""Record a layer's activations with forward hooks that are always removed."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["ActivationCapture", "watch_outputs"]


class ActivationCapture:
    """Context manager recording every call of the given layers.

    ``activations[name]`` holds one tensor per call, in call order (detector heads run once
    per feature level). Each recorded tensor requires grad, even when every parameter before
    it is frozen or the input does not: it is then a fresh leaf made from the output, which
    never touches a parameter's ``requires_grad``. The module's consumers receive a clone of
    the recorded tensor, so an in-place op downstream (``ReLU(inplace=True)``, ``+=``) cannot
    change what was recorded or break its gradient.

    Hooks are removed on exit, whatever happened inside the block.

    ``grad_from_layer=True`` is for a forward run under ``torch.no_grad()`` when only
    gradients *at* the layers are wanted: each recorded tensor is then a detached leaf and
    grad mode is switched on from the first hooked call, so autograd records only what runs
    after the layer (the head), not the backbone before it. Grad mode is restored on exit.
    """

    def __init__(self, layers: Mapping[str, nn.Module], grad_from_layer: bool = False):
        self.layers = dict(layers)
        self.grad_from_layer = grad_from_layer
        self._grad_mode_on_enter = torch.is_grad_enabled()
        self.activations: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs, output):
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                raise TypeError(
                    f"layer {name!r} returned {type(output).__name__}, not a floating-point "
                    "tensor; choose a layer whose output is a (B,C,H,W) feature map."
                )
            if self.grad_from_layer:
                torch.set_grad_enabled(True)
                activation = output.detach().requires_grad_()
            elif output.requires_grad:
                activation = output
            else:
                activation = output.detach().requires_grad_()
            self.activations[name].append(activation)
            return activation.clone()

        return record

    def __enter__(self) -> ActivationCapture:
        self._grad_mode_on_enter = torch.is_grad_enabled()
        try:
            for name, module in self.layers.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc_info) -> None:
        self.remove()
        torch.set_grad_enabled(self._grad_mode_on_enter)


def watch_outputs(
    modules: Mapping[str, nn.Module],
    run_forward: Callable[[], object],
    on_output: Callable[[str, nn.Module, object], None],
) -> None:
    """Run ``run_forward()`` under ``no_grad`` with a forward hook on each of ``modules``
    that calls ``on_output(name, module, output)`` at every call, in the order the calls
    finish; the hooks are removed on every path, errors included."""

    def make_hook(name: str):
        return lambda module, _inputs, output: on_output(name, module, output)

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
