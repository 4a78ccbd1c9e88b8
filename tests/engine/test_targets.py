"""Targets and methods: every way of naming what to explain, from one forward and one backward."""

from __future__ import annotations

import pytest
import torch

from lightning_gradcam import CAMEngine, TopK
from lightning_gradcam.core import methods as methods_mod

from .nets import DeepHeadNet, seeded, tiny_images

ALL_GRADIENT = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


@pytest.fixture(scope="module")
def model():
    return seeded(DeepHeadNet, seed=1).eval()


@pytest.fixture(scope="module")
def images():
    return tiny_images(batch=3, size=16, seed=2)


def explain(model, images, targets, methods=ALL_GRADIENT):
    return CAMEngine(model, layer="stem", methods=methods).explain(images, targets)


def assert_maps_close(a, b, methods=ALL_GRADIENT):
    for method in methods:
        torch.testing.assert_close(a.layer_maps[method], b.layer_maps[method], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.maps[method], b.maps[method], atol=1e-4, rtol=0)


def test_default_target_is_the_predicted_class(model, images):
    logits = model(images).detach()
    res = explain(model, images, None)
    assert res.class_ids.dtype == torch.long
    assert torch.equal(res.class_ids, logits.argmax(1, keepdim=True))
    torch.testing.assert_close(res.scores, logits.max(1, keepdim=True).values)
    for method in ALL_GRADIENT:
        assert res.maps[method].shape == (3, 1, 16, 16)
        assert res.maps[method].dtype == torch.float32
        assert res.layer_maps[method].shape == (3, 1, 16, 16)
        assert res.layer_maps[method].min() >= 0  # after ReLU


def test_int_list_and_tensor_targets_agree(model, images):
    by_int = explain(model, images, 4)
    assert torch.equal(by_int.class_ids, torch.full((3, 1), 4))
    by_list = explain(model, images, [4, 4, 4])
    by_tensor = explain(model, images, torch.tensor([4, 4, 4]))
    assert_maps_close(by_int, by_list)
    assert_maps_close(by_int, by_tensor)
    per_image = explain(model, images, [0, 3, 6])
    assert per_image.class_ids.flatten().tolist() == [0, 3, 6]
    torch.testing.assert_close(
        per_image.scores, model(images).detach().gather(1, torch.tensor([[0], [3], [6]]))
    )


def test_k_ids_per_image_equal_k_separate_calls(model, images):
    """A (B, K) tensor of ids gives K maps per image from one forward; each must equal the
    map of a separate single-target call (catches a wrongly batched gradient)."""
    ids = torch.tensor([[0, 5, 2], [6, 6, 1], [3, 0, 4]])
    together = explain(model, images, ids)
    assert torch.equal(together.class_ids, ids)
    for method in ALL_GRADIENT:
        assert together.maps[method].shape == (3, 3, 16, 16)
    for k in range(ids.shape[1]):
        alone = explain(model, images, ids[:, k])
        for method in ALL_GRADIENT:
            torch.testing.assert_close(
                together.layer_maps[method][:, k : k + 1],
                alone.layer_maps[method],
                atol=1e-5,
                rtol=1e-4,
            )
        torch.testing.assert_close(together.scores[:, k : k + 1], alone.scores)
    # The K maps of one image differ (different classes look at different evidence).
    assert not torch.allclose(
        together.layer_maps["hirescam"][0, 0], together.layer_maps["hirescam"][0, 1]
    )


def test_top_k(model, images):
    logits = model(images).detach()
    res = explain(model, images, TopK(3))
    assert torch.equal(res.class_ids, logits.topk(3, dim=1).indices)
    assert_maps_close(res, explain(model, images, logits.topk(3, dim=1).indices))


def test_callable_target(model, images):
    by_callable = explain(model, images, lambda out: out[:, 2])
    assert torch.equal(by_callable.class_ids, torch.full((3, 1), -1))
    assert_maps_close(by_callable, explain(model, images, 2))
    # A contrast of two classes, two columns: K = 2 maps per image.
    res = explain(model, images, lambda out: torch.stack([out[:, 1] - out[:, 0], out[:, 5]], 1))
    logits = model(images).detach()
    torch.testing.assert_close(res.scores[:, 0], logits[:, 1] - logits[:, 0])
    assert res.maps["gradcam"].shape == (3, 2, 16, 16)


def test_all_methods_from_one_forward_and_one_backward(model, images, monkeypatch):
    engine = CAMEngine(model, layer="stem", methods=ALL_GRADIENT)
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    backwards = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        backwards.append(kwargs.get("is_grads_batched", False))
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    try:
        engine.explain(images, torch.tensor([[0, 1], [2, 3], [4, 5]]))
    finally:
        handle.remove()
    assert len(forwards) == 1
    assert backwards == [True], "K targets should share one batched backward"
    forwards.clear()
    backwards.clear()
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        engine.explain(images)
    finally:
        handle.remove()
    assert len(forwards) == 1 and len(backwards) == 1


def test_a_new_method_is_one_function_and_one_registry_entry(model, images):
    def gradient_energy(activation, gradient):
        """L = sum_c G_c^2 (a made-up weighting)."""
        return gradient.pow(2).sum(dim=1)

    methods_mod.register_method("energy", gradient_energy)
    try:
        res = explain(model, images, 1, methods=("gradcam", "energy"))
    finally:
        methods_mod.unregister_method("energy")
    assert res.maps["energy"].shape == (3, 1, 16, 16)
    assert res.layer_maps["energy"].amax() > 0


def test_maps_never_go_through_numpy(model, images, monkeypatch):
    def no_numpy(self, *args, **kwargs):
        raise AssertionError("a tensor was converted to numpy during explain")

    monkeypatch.setattr(torch.Tensor, "numpy", no_numpy)
    res = explain(model, images, None, methods=(*ALL_GRADIENT, "guided_gradcam"))
    assert all(m.device == images.device for m in res.maps.values())
    assert res.class_ids.device == images.device and res.scores.device == images.device


def test_float32_maths_for_a_bfloat16_model(images):
    model = seeded(DeepHeadNet, seed=1).eval().to(torch.bfloat16)
    res = explain(model, images, [1, 2, 3])
    for method in ALL_GRADIENT:
        assert res.layer_maps[method].dtype == torch.float32
        assert res.maps[method].dtype == torch.float32
        assert torch.isfinite(res.maps[method]).all()
    assert res.scores.dtype == torch.float32
