"""Successive explain calls: no memory growth, no hooks left, no tensors kept alive."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import torch

from lightning_gradcam import CAMEngine

from .nets import GapNet, global_hooks, modules_with_hooks, seeded, tiny_images


def live_tensors() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


@pytest.mark.parametrize(
    "methods, calls",
    [
        (("gradcam", "gradcam++"), 200),
        # Guided backpropagation costs a second forward and backward: fewer calls.
        (("gradcam", "guided_gradcam"), 40),
    ],
)
def test_repeated_explain_does_not_grow_memory(methods, calls):
    model = seeded(GapNet, seed=41)
    images = tiny_images(batch=2, size=8, seed=42)
    engine = CAMEngine(model, layer=None, methods=methods)
    hooks_before = global_hooks()
    for _ in range(10):  # warm-up: allocator pools, lazy imports, the layer search
        engine.explain(images, [1, 2])
    gc.collect()
    tensors_before = live_tensors()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(calls):
            res = engine.explain(images, [1, 2])
        del res
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = end - start
    assert growth < 256 * 1024, f"Python memory grew by {growth} bytes over {calls} calls"
    assert live_tensors() <= tensors_before, "explain keeps tensors alive between calls"
    assert modules_with_hooks(model) == []
    assert global_hooks() == hooks_before
    assert all(p.grad is None for p in model.parameters())
