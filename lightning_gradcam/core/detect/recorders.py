"""Forward recorders: a module's positional inputs and output, per call, hooks always removed."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InputRecorder"]


class InputRecorder:
    """Forward hook keeping the positional inputs and the output of a module's first
    ``calls`` calls (a backbone: the padded batch; a pooler: features, boxes, image sizes; a
    cascade's pooler: one call per stage; a dense head: its per-level features).

    ``grad_output=True``: an output that does not require grad (a fully frozen backbone) is
    replaced by a grad-requiring leaf, the way ``ActivationCapture`` does, so gradients can be
    taken at it; the module's consumers then receive that leaf. ``module=None`` records nothing.

    Example::

        with InputRecorder(model.backbone) as padded:
            model(images)
        height, width = padded.inputs[0].shape[-2:]
    """

    def __init__(self, module: nn.Module | None, calls: int = 1, grad_output: bool = True):
        self.module = module
        self.max_calls = calls
        self.grad_output = grad_output
        self.calls: list[tuple[tuple, object]] = []  # (inputs, output) per call
        self._handle = None

    @property
    def inputs(self) -> tuple | None:
        """The first call's positional inputs (None before any call)."""
        return self.calls[0][0] if self.calls else None

    @property
    def output(self):
        """The first call's output (None before any call)."""
        return self.calls[0][1] if self.calls else None

    def input_size(self) -> tuple[int, int] | None:
        """``(h, w)`` of the first call's first positional input (a backbone's padded batch)."""
        inputs = self.inputs
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            return None
        return tuple(int(s) for s in inputs[0].shape[-2:])

    def _hook(self, _module, inputs, output):
        if len(self.calls) >= self.max_calls:
            return None
        if (
            self.grad_output
            and isinstance(output, torch.Tensor)
            and output.is_floating_point()
            and not output.requires_grad
        ):
            output = output.detach().requires_grad_()
            self.calls.append((tuple(inputs), output))
            return output
        self.calls.append((tuple(inputs), output))
        return None

    def __enter__(self) -> InputRecorder:
        if self.module is not None:
            self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
