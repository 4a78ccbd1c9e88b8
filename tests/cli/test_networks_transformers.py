"""``--network`` takes torchvision's transformers and modern CNNs with sensible default layers
(checked on the meta device: no weights, no real forward)."""

from __future__ import annotations

import pytest

from lightning_gradcam.models.networks import RANDOM_WEIGHTS, prepare_network


@pytest.mark.parametrize(
    "name, layer",
    [
        ("vit_b_16", "encoder.layers.encoder_layer_10"),  # tokens (B, 1+14*14, 768)
        ("swin_t", "features.7"),  # (B, 7, 7, 768) channels-last, the last stage
        ("convnext_tiny", "features"),
        ("maxvit_t", "blocks.3"),
        ("efficientnet_v2_s", "features"),
    ],
)
def test_default_layers_of_transformers_and_modern_cnns(name, layer):
    spec = prepare_network(name, RANDOM_WEIGHTS)
    assert spec.layer == layer
    assert spec.num_classes == 1000


def test_input_sizes_these_networks_cannot_take_are_refused_early():
    # maxvit_t's 7x7 windows need multiples of 224; torchvision's ViT its own image size.
    for name in ("maxvit_t", "vit_b_16"):
        with pytest.raises(ValueError, match=f"{name} cannot run on a 64x64 input"):
            prepare_network(name, RANDOM_WEIGHTS, input_size=64)
    assert prepare_network("swin_t", RANDOM_WEIGHTS, input_size=64).layer == "features.7"
