"""Checks on the autograd graph: does a score depend on a tensor, is a tensor a capture's clone."""

from __future__ import annotations

import torch

__all__ = ["depends_on", "is_clone_of", "require_dependence"]


def depends_on(output: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``target`` is on the autograd graph of ``output`` (a walk over grad_fn nodes)."""
    if output is target:
        return True
    if not output.requires_grad:
        return False
    goal = target.grad_fn
    stack = [output.grad_fn]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if (goal is not None and node is goal) or getattr(node, "variable", None) is target:
            return True
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def is_clone_of(tensor: torch.Tensor, source: torch.Tensor) -> bool:
    """``tensor`` is ``source`` or its direct clone (what ``ActivationCapture`` hands on)."""
    if tensor is source:
        return True
    node = tensor.grad_fn
    if node is None or type(node).__name__ != "CloneBackward0":
        return False
    parent = node.next_functions[0][0]
    return (source.grad_fn is not None and parent is source.grad_fn) or getattr(
        parent, "variable", None
    ) is source


def require_dependence(
    name: str, targets: torch.Tensor, activation: torch.Tensor, hint: str = ""
) -> None:
    """Refuse a layer the targets do not depend on (it would give an all-zero map)."""
    if not depends_on(targets, activation):
        raise ValueError(
            f"the detection scores do not depend on layer {name!r} (e.g. an RPN, "
            "box-regression or mask layer); choose a layer on the classification path"
            + (", " + hint if hint else "")
        )
