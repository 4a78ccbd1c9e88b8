"""A CAM pass leaves no trace on the model, on success and when it raises."""

from __future__ import annotations

import pytest
import torch

from lightning_gradcam import CAMEngine

from .nets import (
    DeepHeadNet,
    assert_same_state,
    global_hooks,
    modules_with_hooks,
    seeded,
    snapshot,
    tiny_images,
)

METHODS = ("gradcam", "gradcam++", "guided_gradcam")


def fresh_model() -> DeepHeadNet:
    return seeded(DeepHeadNet, seed=11)


@pytest.fixture(scope="module")
def images():
    return tiny_images(batch=2, size=16, seed=12)


@pytest.fixture(scope="module")
def reference(images):
    """Maps of the plain model in eval mode, explained in the plainest setting."""
    model = fresh_model().eval()
    return CAMEngine(model, layer="stem", methods=METHODS).explain(images, [1, 2])


def assert_same_maps(res, reference, atol=1e-5):
    for method in METHODS:
        torch.testing.assert_close(res.maps[method], reference.maps[method], atol=atol, rtol=0)


def test_param_grads_untouched(images, reference):
    model = fresh_model().eval()
    params = list(model.parameters())
    for index, param in enumerate(params):
        if index % 2 == 0:  # half hold an accumulated gradient, half have none
            param.grad = torch.full_like(param, 0.25 * index)
    before = snapshot(model)
    res = CAMEngine(model, layer="stem", methods=METHODS).explain(images, [1, 2])
    assert_same_state(before, snapshot(model))
    assert all(p.grad is None for i, p in enumerate(params) if i % 2 == 1)
    assert_same_maps(res, reference)


def test_train_eval_flags_restored(images):
    model = fresh_model().train()
    model.stem[1].eval()  # a frozen BatchNorm inside a model in train mode
    model.drop.eval()
    before = snapshot(model)
    CAMEngine(model, layer="stem", methods=METHODS).explain(images)
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["training"][""] and not after["training"]["stem.1"]
    assert_same_state(before, after)


def test_requires_grad_flags_restored(images, reference):
    model = fresh_model().eval()
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(("block", "fc.bias")))
    before = snapshot(model)
    res = CAMEngine(model, layer="stem", methods=METHODS).explain(images, [1, 2])
    assert_same_state(before, snapshot(model))
    assert_same_maps(res, reference)


def test_rng_state_unchanged_with_dropout_in_train_mode(images):
    model = fresh_model().train()
    torch.manual_seed(123)
    expected_next = torch.rand(5)
    torch.manual_seed(123)
    before = snapshot(model)
    res = CAMEngine(model, layer="stem", methods=METHODS).explain(images)
    assert_same_state(before, snapshot(model))
    assert torch.equal(torch.rand(5), expected_next)
    # Dropout was off during the pass: two calls give the same maps.
    again = CAMEngine(model, layer="stem", methods=METHODS).explain(images)
    assert_same_maps(again, res, atol=0)


def test_batchnorm_statistics_unchanged_in_train_mode(images):
    model = fresh_model().train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [
        (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
        for bn in bns
    ]
    CAMEngine(model, layer="stem", methods=METHODS).explain(images)
    for bn, (mean, var, count) in zip(bns, stats):
        assert torch.equal(bn.running_mean, mean)
        assert torch.equal(bn.running_var, var)
        assert torch.equal(bn.num_batches_tracked, count)


def test_no_hooks_left(images):
    model = fresh_model()
    hooks_before = global_hooks()
    CAMEngine(model, layer=None, methods=METHODS).explain(images)  # layer search hooks all
    assert modules_with_hooks(model) == []
    assert global_hooks() == hooks_before


def test_every_parameter_frozen(images, reference):
    model = fresh_model().eval().requires_grad_(False)
    before = snapshot(model)
    res = CAMEngine(model, layer="stem", methods=METHODS).explain(images, [1, 2])
    assert_same_state(before, snapshot(model))
    assert not any(p.requires_grad for p in model.parameters())
    assert_same_maps(res, reference)


def test_under_outer_no_grad(images, reference):
    model = fresh_model().eval()
    with torch.no_grad():
        res = CAMEngine(model, layer="stem", methods=METHODS).explain(images, [1, 2])
        assert not torch.is_grad_enabled()
    assert_same_maps(res, reference)


def test_under_outer_inference_mode(images, reference):
    model = fresh_model().eval()
    with torch.inference_mode():
        res = CAMEngine(model, layer="stem", methods=METHODS).explain(images, [1, 2])
        assert torch.is_inference_mode_enabled()
    assert_same_maps(res, reference)


def test_input_created_in_inference_mode(images, reference):
    model = fresh_model().eval()
    with torch.inference_mode():
        frozen_images = images.clone()
    assert frozen_images.is_inference()
    res = CAMEngine(model, layer="stem", methods=METHODS).explain(frozen_images, [1, 2])
    assert_same_maps(res, reference)


def test_under_autocast_bf16(images, reference):
    model = fresh_model().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = CAMEngine(model, layer="stem", methods=METHODS).explain(images, [1, 2])
        assert torch.is_autocast_enabled("cpu")
    for method in METHODS:
        assert res.maps[method].dtype == torch.float32
    for method in ("gradcam", "gradcam++"):  # maths in float32: same maps as without autocast
        assert res.layer_maps[method].dtype == torch.float32
    assert_same_maps(res, reference)


def test_channels_last_model(images, reference):
    model = fresh_model().eval().to(memory_format=torch.channels_last)
    before = snapshot(model)
    cl_images = images.contiguous(memory_format=torch.channels_last)
    res = CAMEngine(model, layer="stem", methods=METHODS).explain(cl_images, [1, 2])
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_state(before, snapshot(model))
    assert_same_maps(res, reference, atol=1e-4)


class Boom(RuntimeError):
    pass


def raising_target(output):
    raise Boom("targets callable failed")


ERRORS = {
    "callable raises": (raising_target, Boom),
    "targets length": ([1, 2, 3], ValueError),
    "class id out of range": (99, ValueError),
    "detached scores": (lambda out: out.detach()[:, :1], RuntimeError),
}


@pytest.mark.parametrize("case", list(ERRORS))
@pytest.mark.parametrize("outer", ["plain", "no_grad", "inference_mode"])
def test_no_trace_when_explain_raises(images, case, outer):
    targets, error = ERRORS[case]
    model = fresh_model().train()
    model.block[1].eval()
    next(model.parameters()).grad = torch.ones_like(next(model.parameters()))
    model.fc.weight.requires_grad_(False)
    hooks_before = global_hooks()
    context = {
        "plain": torch.enable_grad,
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
    }[outer]
    with context():
        before = snapshot(model)
        with pytest.raises(error):
            CAMEngine(model, layer="stem", methods=METHODS).explain(images, targets)
        after = snapshot(model)
    assert_same_state(before, after)
    assert modules_with_hooks(model) == []
    assert global_hooks() == hooks_before


def test_numpy_and_python_rng_streams_unchanged_by_a_model_that_draws_from_them(images):
    """A model (or its data code) drawing from NumPy's or Python's global stream during the
    pass leaves them where they were: the same guard serves the engine and the detectron2
    hook."""
    import random

    import numpy as np

    def draw(*_):
        np.random.rand()
        random.random()

    model = fresh_model().eval()
    model.register_forward_pre_hook(draw)
    np.random.seed(7)
    random.seed(7)
    expected = (np.random.rand(3).tolist(), random.random())
    np.random.seed(7)
    random.seed(7)
    CAMEngine(model, layer="stem", methods=METHODS).explain(images)
    assert (np.random.rand(3).tolist(), random.random()) == expected
