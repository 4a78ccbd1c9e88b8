"""Every way of calling the engine wrongly gets an error that says what and how to fix it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_gradcam import CAMEngine, LayerNotFoundError, TopK
from lightning_gradcam.core.methods import check_methods

from .nets import DeepHeadNet, modules_with_hooks, seeded, tiny_images


@pytest.fixture(scope="module")
def model():
    return seeded(DeepHeadNet, seed=21).eval()


@pytest.fixture(scope="module")
def engine(model):
    return CAMEngine(model, layer="stem")


@pytest.fixture(scope="module")
def images():
    return tiny_images(batch=2, size=16, seed=22)


def test_targets_list_longer_or_shorter_than_the_batch(engine, images):
    with pytest.raises(ValueError, match=r"targets give 3 entries for a batch of 2 images"):
        engine.explain(images, [1, 2, 3])
    with pytest.raises(ValueError, match=r"targets give 1 entries for a batch of 2 images"):
        engine.explain(images, [1])
    with pytest.raises(ValueError, match=r"targets give 3 entries for a batch of 2 images"):
        engine.explain(images, torch.zeros(3, 2, dtype=torch.long))


def test_class_id_out_of_range(engine, images):
    with pytest.raises(
        ValueError, match=r"class id 7 is outside the model's 7 classes \(valid ids: 0\.\.6\)"
    ):
        engine.explain(images, 7)
    with pytest.raises(ValueError, match=r"class id -1 is outside"):
        engine.explain(images, [0, -1])


def test_bad_target_types(engine, images):
    with pytest.raises(TypeError, match="not a bool"):
        engine.explain(images, True)
    with pytest.raises(TypeError, match="integer class ids"):
        engine.explain(images, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"TopK\(9\) asks for more classes than the 7 outputs"):
        engine.explain(images, TopK(9))
    with pytest.raises(ValueError, match="positive integer k"):
        TopK(0)


def test_bad_targets_callable(engine, images):
    with pytest.raises(ValueError, match=r"scores for 1 images, but the batch has 2"):
        engine.explain(images, lambda out: out[:1, :2])
    with pytest.raises(TypeError, match="must return a tensor, got list"):
        engine.explain(images, lambda out: [0])
    with pytest.raises(RuntimeError, match="do not depend on the captured layer"):
        engine.explain(images, lambda out: out.detach()[:, 0])


def test_bad_images(engine, images):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor, got \(3, 16, 16\)"):
        engine.explain(images[0])
    with pytest.raises(TypeError, match="floating point, or uint8 .* got torch.int32"):
        engine.explain(images.to(torch.int32))


def test_unknown_method_lists_choices(model):
    with pytest.raises(
        ValueError, match=r"unknown CAM method\(s\) 'gradcam\+'.*choose from gradcam, gradcam\+\+"
    ):
        CAMEngine(model, layer="stem", methods=("gradcam", "gradcam+"))
    with pytest.raises(ValueError, match="methods is empty"):
        check_methods(())


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="must be a torch.nn.Module, got function"):
        CAMEngine(lambda x: x)


def test_layer_errors(model, images):
    with pytest.raises(
        ValueError, match=r"layer 'fc' outputs shape \(2, 7\); CAM needs a \(B, C, h, w\)"
    ):
        CAMEngine(model, layer="fc").explain(images)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.unused = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))

    shared = Shared()
    with pytest.raises(RuntimeError, match="'conv' ran 2 times in one forward pass"):
        CAMEngine(shared, layer="conv").explain(images)
    with pytest.raises(RuntimeError, match="'unused' did not run during the forward pass"):
        CAMEngine(shared, layer="unused").explain(images)
    assert modules_with_hooks(shared) == []


def test_no_4d_layer_for_automatic_choice(images):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    with pytest.raises(LayerNotFoundError, match="no submodule with a 4-D"):
        CAMEngine(mlp, layer=None).explain(images)
    assert modules_with_hooks(mlp) == []
