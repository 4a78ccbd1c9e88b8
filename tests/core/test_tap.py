"""core.tap.ForwardTap: the layer's gradient from a forward the caller runs itself, equal to
the engine's own pass; it stands aside (result None, a reason) wherever using that forward
could change what the caller sees; the caller's output is what its no_grad forward gives."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.core.tap import ForwardTap
from lightning_gradcam.core.targets import select_scores


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=True),  # in place on the tapped layer's output
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


@contextlib.contextmanager
def _no_grad_autocast():
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        yield


def _tap(net, images, targets=None) -> ForwardTap:
    return ForwardTap(net, net[3], images, lambda out: select_scores(out, targets))


def test_the_tapped_gradient_and_maps_equal_the_engines_own_pass():
    net, images = _net(), torch.rand(5, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        reference = net(images)
    engine = CAMEngine(net, layer="3", methods=("gradcam", "gradcam++"))
    own = engine.explain(images, targets=labels)
    with engine.tap(images, targets=labels) as tap, torch.no_grad():
        output = net(images)
    assert tap.skipped is None
    assert torch.equal(output, reference) and not output.requires_grad
    tapped = engine.explain_tapped(images, tap.result)
    assert torch.equal(tapped.class_ids, own.class_ids)
    for method in ("gradcam", "gradcam++"):
        assert torch.allclose(tapped.layer_maps[method], own.layer_maps[method], atol=1e-7)
        assert torch.allclose(tapped.maps[method], own.maps[method], atol=1e-6)
    for p in net.parameters():
        assert p.grad is None  # autograd.grad at the activation only
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    "mode, reason",
    [
        (torch.inference_mode, "inference_mode"),
        (torch.enable_grad, "grad mode on"),
        (lambda: _no_grad_autocast(), "autocast"),
    ],
)
def test_it_stands_aside_where_the_forward_is_not_a_plain_no_grad_one(mode, reason):
    net, images = _net(), torch.rand(2, 3, 16, 16)
    with _tap(net, images) as tap, mode():
        output = net(images)
    assert tap.result is None and reason in tap.skipped
    if reason == "grad mode on":
        assert output.requires_grad  # the caller's own graph, untouched


def test_it_stands_aside_for_other_images_and_takes_only_the_first_call():
    net, images = _net(), torch.rand(2, 3, 16, 16)
    with _tap(net, images) as tap, torch.no_grad():
        net((images - 0.5) * 2)  # a validation_step that normalises first
    assert tap.result is None and "other images" in tap.skipped

    with _tap(net, images) as tap, torch.no_grad():
        first = net(images.clone())  # an equal tensor is the same images
        second = net(images)
    assert tap.skipped is None and torch.equal(first, second)
    assert not first.requires_grad and not second.requires_grad


def test_a_layer_run_twice_is_refused_and_the_output_still_carries_no_graph():
    torch.manual_seed(0)
    block = nn.Conv2d(4, 4, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), block, block, nn.Flatten()).eval()
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        reference = net(images)
    tap = ForwardTap(net, block, images, lambda out: select_scores(out, None))
    with tap, torch.no_grad():
        output = net(images)
    assert tap.result is None and "more than once" in tap.skipped
    assert torch.equal(output, reference) and not output.requires_grad
    assert torch.is_grad_enabled()


def test_tuple_outputs_come_back_detached_and_hooks_come_off_after_an_error():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _net()

        def forward(self, x):
            logits = self.body(x)
            return logits, {"probs": logits.softmax(1)}

    net, images = TwoHeads().eval(), torch.rand(3, 3, 16, 16)
    tap = ForwardTap(net, net.body[3], images, lambda out: select_scores(out[0], None))
    with tap, torch.no_grad():
        logits, extra = net(images)
    assert tap.skipped is None
    assert not logits.requires_grad and not extra["probs"].requires_grad

    with pytest.raises(RuntimeError, match="user code"), torch.no_grad(), _tap(net.body, images):
        net.body(images)
        raise RuntimeError("user code failed")
    assert not net.body._forward_hooks and not net.body._forward_pre_hooks
    assert not net.body[3]._forward_hooks
    with torch.no_grad():
        assert not net.body(images).requires_grad


def test_observe_only_records_the_scores_and_changes_nothing():
    net, images = _net(), torch.rand(3, 3, 16, 16)
    labels = torch.tensor([1, 2, 3])
    with torch.no_grad():
        reference = net(images)
    tap = ForwardTap(net, net[3], images, lambda out: select_scores(out, labels), True)
    with tap, torch.no_grad():
        output = net(images)
        assert not torch.is_grad_enabled()
    assert tap.result is None and tap.skipped is None
    assert output is not None and torch.equal(output, reference) and not output.requires_grad
    assert torch.equal(tap.observed, reference.gather(1, labels[:, None]))


def test_a_call_that_raises_past_the_layer_leaves_grad_mode_as_it_was_on_entry():
    net, images = _net(), torch.rand(2, 3, 16, 16)

    def head_fails(*_):
        raise ValueError("the head failed")

    handle = net[6].register_forward_hook(head_fails)  # past the tapped layer net[3]
    try:
        with torch.no_grad():
            with _tap(net, images) as tap, pytest.raises(ValueError, match="head failed"):
                net(images)  # the caller catches it and goes on
            assert not torch.is_grad_enabled() and tap.result is None
    finally:
        handle.remove()
