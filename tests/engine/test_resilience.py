"""A pass that fails never takes the run down: warnings, switching off, OOM retries in chunks."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.core.resilience import (
    PassGuard,
    check_on_error,
    concat_batches,
    is_out_of_memory,
    run_in_chunks,
)

from .nets import GapNet, seeded, tiny_images

METHODS = ("gradcam", "gradcam++", "layercam")


class RunsOutAbove(nn.Module):
    """A real classifier whose forward runs out of memory for batches larger than ``limit``,
    as a GPU would; records the batch size of every call."""

    def __init__(self, net: nn.Module, limit: int, error: type = torch.cuda.OutOfMemoryError):
        super().__init__()
        self.net = net
        self.limit = limit
        self.error = error
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)")
        return self.net(x)


@pytest.fixture(scope="module")
def net():
    return seeded(GapNet, seed=3).eval()


@pytest.fixture(scope="module")
def images():
    return tiny_images(batch=8, size=16, seed=4)


def _explain_in_chunks(model, images, targets=None, **kwargs):
    engine = CAMEngine(model, layer="net.features", methods=METHODS)

    def run(start: int, stop: int):
        part = targets[start:stop] if isinstance(targets, torch.Tensor) else targets
        return engine.explain(images[start:stop], targets=part)

    return run_in_chunks(run, len(images), concat_batches, **kwargs)


@pytest.mark.parametrize("targets", [None, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])])
def test_out_of_memory_is_retried_in_halved_chunks_with_the_same_maps(net, images, targets):
    whole = CAMEngine(net, layer="features", methods=METHODS).explain(images, targets=targets)
    model = RunsOutAbove(net, limit=3)
    retries = []
    chunked = _explain_in_chunks(
        model, images, targets, on_retry=lambda size, why: retries.append((size, why))
    )
    assert model.sizes == [8, 4, 2, 2, 2, 2]
    assert [size for size, _ in retries] == [4, 2]
    assert retries[0][1].startswith("OutOfMemoryError: CUDA out of memory")
    assert chunked.layer == "net.features"
    assert torch.equal(chunked.class_ids, whole.class_ids)
    torch.testing.assert_close(chunked.scores, whole.scores, rtol=1e-5, atol=1e-6)
    for method in METHODS:
        assert chunked.maps[method].shape == (8, 1, 16, 16)
        torch.testing.assert_close(chunked.maps[method], whole.maps[method], rtol=0, atol=1e-5)
        torch.testing.assert_close(
            chunked.layer_maps[method], whole.layer_maps[method], rtol=1e-5, atol=1e-6
        )


def test_a_runtime_error_saying_out_of_memory_is_retried_other_errors_are_not(net, images):
    model = RunsOutAbove(net, limit=5, error=RuntimeError)
    _explain_in_chunks(model, images)
    assert model.sizes == [8, 4, 4]
    model = RunsOutAbove(net, limit=5, error=ValueError)
    with pytest.raises(ValueError):
        _explain_in_chunks(model, images)
    assert model.sizes == [8]
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))


def test_when_one_image_does_not_fit_the_out_of_memory_error_goes_through(net, images):
    model = RunsOutAbove(net, limit=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _explain_in_chunks(model, images)
    assert model.sizes == [8, 4, 2, 1]


def _recorder():
    messages: list[str] = []
    return messages, messages.append


def test_failed_passes_are_one_line_warnings_and_three_in_a_row_switch_off(net, images):
    broken = RunsOutAbove(net, limit=8, error=ValueError)
    engine = CAMEngine(broken, layer="net.features", methods=("gradcam",))
    messages, say = _recorder()
    guard = PassGuard(owner="GradCAMCallback", warn=say)

    broken.limit = 4  # batches of 8 now fail with a ValueError from the model's forward
    outcome = guard.run("the CAM pass at step 3", lambda: engine.explain(images))
    assert not outcome.ok and outcome.ran and outcome.value is None
    assert outcome.reason == "ValueError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)"
    assert messages == [
        "GradCAMCallback: the CAM pass at step 3 failed and was skipped (ValueError: CUDA out "
        "of memory. Tried to allocate 2.00 GiB (GPU 0)); training goes on (1 failed in a row, "
        "off after 3)"
    ]
    broken.limit = 8  # a pass that works resets the count
    ok = guard.run("the CAM pass at step 6", lambda: engine.explain(images))
    assert ok.ok and ok.value.maps["gradcam"].shape == (8, 1, 16, 16)
    broken.limit = 4
    for step in (9, 12, 15):
        guard.run(f"the CAM pass at step {step}", lambda: engine.explain(images))
    assert len(messages) == 4 and all("\n" not in m for m in messages)
    assert "step 15 failed (ValueError: CUDA out of memory" in messages[-1]
    assert messages[-1].endswith(
        "3 passes failed in a row, so GradCAMCallback switches itself off for the rest of the run"
    )
    assert not guard.active
    broken.limit = 8
    calls = len(broken.sizes)
    off = guard.run("the CAM pass at step 18", lambda: engine.explain(images))
    assert not off.ok and not off.ran and len(broken.sizes) == calls  # not even tried
    assert len(messages) == 4


def test_on_error_raise_lets_the_error_through_with_a_note(net, images):
    broken = RunsOutAbove(net, limit=1, error=ValueError)
    engine = CAMEngine(broken, layer="net.features", methods=("gradcam",))
    messages, say = _recorder()
    guard = PassGuard(on_error="raise", warn=say)
    with pytest.raises(ValueError) as caught:
        guard.run("the CAM pass at step 3", lambda: engine.explain(images))
    if sys.version_info >= (3, 11):  # exception notes
        assert "on_error='raise' stops the run" in caught.value.__notes__[0]
    assert messages == []
    with pytest.raises(ValueError, match="on_error must be 'warn'.*or 'raise'"):
        check_on_error("ignore")


def test_the_guard_retries_out_of_memory_and_keeps_the_chunk_size_that_fitted(net, images):
    model = RunsOutAbove(net, limit=2)
    engine = CAMEngine(model, layer="net.features", methods=("gradcam",))
    messages, say = _recorder()
    guard = PassGuard(warn=say)

    def run(start, stop):
        return engine.explain(images[start:stop])

    first = guard.run_chunked("the CAM pass at step 3", run, len(images))
    assert first.ok and first.chunk_size == 2 and messages == []
    assert first.value.maps["gradcam"].shape == (8, 1, 16, 16)
    assert model.sizes == [8, 4, 2, 2, 2, 2]
    model.sizes.clear()
    second = guard.run_chunked("the CAM pass at step 6", run, len(images))
    assert second.ok and model.sizes == [2, 2, 2, 2]  # starts where it fitted last time
    torch.testing.assert_close(second.value.maps["gradcam"], first.value.maps["gradcam"])

    model.limit = 0  # nothing fits any more: one warning, the pass is skipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may go to warnings.warn: ``say`` gets it
        third = guard.run_chunked("the CAM pass at step 9", run, len(images))
    assert not third.ok and third.reason.startswith("OutOfMemoryError: CUDA out of memory")
    assert len(messages) == 1 and "step 9 failed and was skipped (OutOfMemoryError" in messages[0]
