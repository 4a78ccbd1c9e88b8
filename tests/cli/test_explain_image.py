"""``lightning_gradcam.explain_image``: what ``lightning-gradcam`` computes for one image,
called as a library (a random-weight shufflenet, a generated image, the CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_gradcam.engine import CAMEngine
from lightning_gradcam.explain_image import explain_image, picture_suffixes
from lightning_gradcam.io import sample_image
from lightning_gradcam.models.networks import materialize, prepare_network

NETWORK = "shufflenet_v2_x1_0"
METHODS = ("gradcam", "guided_backprop")


@pytest.fixture(scope="module")
def network():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = prepare_network(NETWORK, "random", input_size=64)
        model = materialize(spec, "cpu")
    return spec, model


def test_prediction_pictures_and_faithfulness_are_returned(network):
    spec, model = network
    engine = CAMEngine(model, layer=spec.layer, methods=METHODS)
    image = sample_image(80, seed=4)
    done = explain_image(
        engine, spec, image, METHODS, torch.device("cpu"), faithfulness=("deletion",), grid=True
    )
    with torch.no_grad():
        probs = model(spec.preprocess(image)[1][None]).softmax(dim=1)[0]
    assert done.predicted == int(probs.argmax()) == done.explained
    assert math.isclose(done.probability, float(probs.max()), rel_tol=1e-5)
    kinds = [kind for method in METHODS for kind in picture_suffixes(method)]
    assert sorted(done.pictures) == sorted([*kinds, "grid"])
    for kind in kinds:  # on the 64 px network view, RGB uint8
        assert done.pictures[kind].shape == (64, 64, 3)
        assert done.pictures[kind].dtype == np.uint8
    assert set(done.faithfulness) == {*METHODS, "random"}
    assert set(done.faithfulness["gradcam"]) == {"deletion_auc"}


def test_a_given_class_is_explained_and_the_prediction_still_reported(network):
    spec, model = network
    engine = CAMEngine(model, layer=spec.layer, methods=("gradcam",))
    image = sample_image(80, seed=4)
    first = explain_image(engine, spec, image, ("gradcam",), torch.device("cpu"))
    other = (first.predicted + 1) % spec.num_classes
    done = explain_image(engine, spec, image, ("gradcam",), torch.device("cpu"), class_id=other)
    assert (done.predicted, done.explained) == (first.predicted, other)
    assert done.faithfulness == {}
    # The map of another class differs from the predicted one's (same image, same weights).
    assert not np.array_equal(first.pictures["heatmap"], done.pictures["heatmap"])
