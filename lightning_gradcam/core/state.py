"""Leave no trace: run a CAM pass and give the model back exactly as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["preserve_model_state", "cam_mode"]


@contextlib.contextmanager
def preserve_model_state(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block; restore on exit, errors included:

    - the ``training`` flag of every submodule (a user may keep a frozen BatchNorm in eval
      inside a model in train mode, so one ``model.train()`` would not do);
    - ``requires_grad`` of every parameter (never changed here, checked as a safeguard);
    - the CPU and CUDA RNG states, so a CAM pass draws nothing from the training run's stream.

    Eval mode keeps BatchNorm running statistics untouched and dropout off. Parameters'
    ``.grad`` is never written because gradients are taken with ``torch.autograd.grad``.
    """
    modes = [(module, module.training) for module in model.modules()]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        model.eval()
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training
        for param, flag in requires_grad:
            if param.requires_grad != flag:
                param.requires_grad_(flag)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


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
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast(device_type="cuda", enabled=False))
        # Hooks must fire on compiled modules too: run their original code eagerly rather
        # than re-tracing (and recompiling) the model for a hooked CAM pass.
        stack.enter_context(torch.compiler.set_stance("force_eager"))
        yield
