"""Leave no trace: run a CAM pass and give the model back exactly as it was."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["preserve_rng", "preserve_model_state", "cam_mode"]


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Restore the torch (CPU, CUDA), NumPy and Python RNG states on exit, errors included,
    so a CAM pass draws nothing from the training run's streams (detectron2's training
    augmentations draw from NumPy's global stream, and its test-time ``ResizeShortestEdge``
    calls ``np.random.choice`` even with a single size)."""
    torch_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def preserve_model_state(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; restore on exit, errors included:

    - the ``training`` flag of every submodule (a user may keep a frozen BatchNorm in eval
      inside a model in train mode, so one ``model.train()`` would not do);
    - ``requires_grad`` of every parameter (never changed here, checked as a safeguard);
    - the RNG states (``preserve_rng``), so a CAM pass draws nothing from the training run's
      streams.

    Eval mode keeps BatchNorm running statistics untouched and dropout off. Parameters'
    ``.grad`` is never written because gradients are taken with ``torch.autograd.grad``.
    """
    modes = [(module, module.training) for module in model.modules()]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    try:
        with preserve_rng():
            model.eval()
            yield model
    finally:
        for module, was_training in modes:
            module.training = was_training
        for param, flag in requires_grad:
            if param.requires_grad != flag:
                param.requires_grad_(flag)


@contextlib.contextmanager
def cam_mode() -> Iterator[None]:
    """Grad enabled, inference mode off, autocast off, compiled modules run eagerly.

    Lightning validates under ``no_grad`` (inside ``fit``) or ``inference_mode``
    (``validate``/``test``), and may train under autocast; a CAM pass must escape all three.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast(device_type="cpu", enabled=False))
        # is_initialized, not is_available: the latter probes the driver (NVML) at every
        # call on a machine without a GPU (~1.5 ms, per validation batch with
        # metrics_on="validation"); a CUDA tensor in the pass means CUDA is initialised.
        if torch.cuda.is_initialized():
            stack.enter_context(torch.autocast(device_type="cuda", enabled=False))
        # Hooks must fire on compiled modules too: run their original code eagerly rather
        # than re-tracing (and recompiling) the model for a hooked CAM pass.
        stack.enter_context(torch.compiler.set_stance("force_eager"))
        yield
