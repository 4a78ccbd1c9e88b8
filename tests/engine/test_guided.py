"""Guided backpropagation: every ReLU form, against the rule written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_gradcam import CAMEngine
from lightning_gradcam.core.guided import guided_relus, normalize_gradient_image

from .nets import GapNet, modules_with_hooks, seeded, tiny_images


class AllReluForms(nn.Module):
    """Four linear layers joined by four different ReLU forms (and a ReLU6)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3, self.l4, self.l5 = (nn.Linear(6, 6) for _ in range(5))
        self.act = nn.ReLU(inplace=True)
        self.act6 = nn.ReLU6()
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        z1 = self.l1(x)
        h1 = F.relu(z1, inplace=True)
        h2 = torch.relu(self.l2(h1))
        h3 = self.act(self.l3(h2))
        h4 = self.l4(h3).relu_()
        h5 = self.act6(self.l5(h4) * 4)
        return self.out(h5)


def hand_guided_gradient(model: AllReluForms, x: torch.Tensor, k: int) -> torch.Tensor:
    """d score_k / d x with every ReLU's backward replaced by ``relu(g) * [z > 0]`` (and
    ``[0 < z < 6]`` for the ReLU6), written out layer by layer."""
    with torch.no_grad():
        layers = [model.l1, model.l2, model.l3, model.l4]
        pre, h = [], x
        for layer in layers:
            z = layer(h)
            pre.append(z)
            h = z.clamp(min=0)
        z5 = model.l5(h) * 4
        g = model.out.weight[k].expand_as(z5)  # d score / d h5
        g = g.clamp(min=0) * ((z5 > 0) & (z5 < 6))  # guided ReLU6
        g = (g * 4) @ model.l5.weight  # through "* 4" and l5
        for layer, z in zip(reversed(layers), reversed(pre)):
            g = g.clamp(min=0) * (z > 0)
            g = g @ layer.weight
        return g


@pytest.fixture(scope="module")
def mlp():
    model = seeded(AllReluForms, seed=31)
    with torch.no_grad():
        model.l5.bias.add_(0.5)  # some units above 6 and some below 0 in the ReLU6
    return model


def test_guided_gradient_matches_the_hand_rule(mlp):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(32), requires_grad=True)
    for k in range(3):
        with guided_relus():
            score = mlp(x)[:, k].sum()
        (grad,) = torch.autograd.grad(score, x)
        torch.testing.assert_close(
            grad, hand_guided_gradient(mlp, x.detach(), k), atol=1e-6, rtol=1e-5
        )
    # The guided gradient differs from the plain one (negative gradients were cut).
    (plain,) = torch.autograd.grad(mlp(x)[:, 0].sum(), x)
    assert not torch.allclose(plain, hand_guided_gradient(mlp, x.detach(), 0))


def test_normal_backward_unaffected_after_the_context(mlp):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(33), requires_grad=True)
    (before,) = torch.autograd.grad(mlp(x)[:, 1].sum(), x)
    with guided_relus():
        mlp(x)[:, 1].sum().backward()
    x.grad = None
    for p in mlp.parameters():
        p.grad = None
    (after,) = torch.autograd.grad(mlp(x)[:, 1].sum(), x)
    assert torch.equal(before, after)
    # A graph built inside the context but differentiated after it stays guided.
    with guided_relus():
        out = mlp(x)[:, 1].sum()
    (late,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(late, hand_guided_gradient(mlp, x.detach(), 1), atol=1e-6, rtol=1e-5)


def test_guided_gradcam_in_the_engine():
    model = seeded(GapNet, seed=34).eval()
    images = tiny_images(batch=2, size=12, seed=35)
    methods = ("guided_backprop", "guided_gradcam", "guided_gradcam++")
    res = CAMEngine(model, layer="features", methods=methods).explain(images, [1, 3])
    assert set(res.maps) == set(methods)
    assert set(res.layer_maps) == {"gradcam", "gradcam++"}  # computed for the guided products

    x = images.clone().requires_grad_()
    with guided_relus():
        scores = model(x).gather(1, torch.tensor([[1], [3]]))
    (grad,) = torch.autograd.grad(scores.sum(), x)
    grad = grad[:, None]  # (B, K, C, H, W)
    expected_gb = normalize_gradient_image(grad)
    torch.testing.assert_close(res.guided["guided_backprop"], expected_gb, atol=1e-5, rtol=0)
    for method, base in (("guided_gradcam", "gradcam"), ("guided_gradcam++", "gradcam++")):
        cam = CAMEngine(model, layer="features", methods=(base,)).explain(images, [1, 3]).maps[base]
        expected = normalize_gradient_image(grad * cam[:, :, None])
        assert res.guided[method].shape == (2, 1, 3, 12, 12)
        torch.testing.assert_close(res.guided[method], expected, atol=1e-5, rtol=0)
        assert res.maps[method].shape == (2, 1, 12, 12)
        assert res.maps[method].min() >= 0 and res.maps[method].max() <= 1
    assert modules_with_hooks(model) == []


def test_guided_with_k_targets_matches_single_calls():
    model = seeded(GapNet, seed=36).eval()
    images = tiny_images(batch=2, size=12, seed=37)
    engine = CAMEngine(model, layer="features", methods=("guided_gradcam",))
    ids = torch.tensor([[0, 2], [4, 1]])
    together = engine.explain(images, ids)
    for k in range(2):
        alone = engine.explain(images, ids[:, k])
        torch.testing.assert_close(
            together.guided["guided_gradcam"][:, k : k + 1],
            alone.guided["guided_gradcam"],
            atol=1e-5,
            rtol=0,
        )
