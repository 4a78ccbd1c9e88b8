"""Golden values: Grad-CAM against the classic CAM, the other weightings against hand sums."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_gradcam import CAMEngine
from lightning_gradcam.core.methods import compute_cam, normalize_maps, upsample_maps

from .nets import GapNet, seeded, tiny_images


@pytest.fixture(scope="module")
def gap_setup():
    model = seeded(GapNet, seed=3).eval()
    images = tiny_images(batch=3, size=12, seed=4)
    with torch.no_grad():
        activations = model.features(images)  # (B, C, h, w), post-ReLU
        logits = model(images)
    return model, images, activations, logits


def classic_cam(model: GapNet, activations: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """Zhou et al. 2016: ``CAM_k = sum_c W[k, c] A_c``; Grad-CAM's weights are
    ``dS_k/dA_cij = W[k, c] / (h w)``, so Grad-CAM = CAM / (h w)."""
    weights = model.fc.weight.detach()[class_ids]  # (B, K, C)
    h, w = activations.shape[-2:]
    return torch.einsum("bkc,bchw->bkhw", weights, activations) / (h * w)


def test_gradcam_equals_classic_cam(gap_setup):
    model, images, activations, logits = gap_setup
    targets = torch.tensor([[0, 4], [2, 2], [1, 3]])
    res = CAMEngine(model, layer="features", methods=("gradcam",)).explain(images, targets)
    expected = F.relu(classic_cam(model, activations, targets))
    assert expected.amax() > 0, "test set-up: the classic CAM should not be all zeros"
    torch.testing.assert_close(res.layer_maps["gradcam"], expected, atol=1e-5, rtol=0)
    expected_maps = normalize_maps(upsample_maps(expected, (12, 12)))
    torch.testing.assert_close(res.maps["gradcam"], expected_maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.scores, logits.gather(1, targets), atol=1e-5, rtol=0)


def test_gap_head_makes_xgradcam_and_hirescam_the_classic_cam(gap_setup):
    """With a uniform gradient per channel, XGrad-CAM's and HiResCAM's weights reduce to
    Grad-CAM's; LayerCAM keeps the positive weights only."""
    model, images, activations, _ = gap_setup
    methods = ("xgradcam", "hirescam", "layercam")
    res = CAMEngine(model, layer="features", methods=methods).explain(images, 1)
    ids = torch.ones(3, 1, dtype=torch.long)
    expected = F.relu(classic_cam(model, activations, ids))
    torch.testing.assert_close(res.layer_maps["xgradcam"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.layer_maps["hirescam"], expected, atol=1e-5, rtol=0)
    h, w = activations.shape[-2:]
    positive = model.fc.weight.detach()[1].clamp(min=0) / (h * w)
    layercam = torch.einsum("c,bchw->bhw", positive, activations)[:, None]
    torch.testing.assert_close(res.layer_maps["layercam"], layercam, atol=1e-5, rtol=0)


# A hand example: two channels on a 2x2 grid.
#   channel 0: A = [[1, 2], [3, 0]] (sum 6),  G = [[1, -1], [2, 0]]
#   channel 1: A = [[0, 1], [1, 0]] (sum 2),  G = [[0.5, 0.5], [0.5, 0.5]]
A = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]]])
G = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]]])


def test_gradcam_plus_plus_by_hand():
    """alpha_cij = G^2 / (2 G^2 + sum_ab A_cab * G^3); w_c = sum_ij alpha_cij relu(G_cij).

    channel 0 (sum A = 6):
      (0,0) G=1:  1 / (2 + 6)       = 1/8,   times relu(1) = 1/8
      (0,1) G=-1: 1 / (2 - 6)       = -1/4,  times relu(-1) = 0
      (1,0) G=2:  4 / (8 + 6 * 8)   = 1/14,  times relu(2) = 1/7
      (1,1) G=0:  0 / 0 -> alpha 0 (masked, no NaN)
      w_0 = 1/8 + 1/7 = 15/56
    channel 1 (sum A = 2): every G = 1/2: alpha = (1/4) / (1/2 + 2/8) = 1/3;
      w_1 = 4 * 1/3 * 1/2 = 2/3
    L = 15/56 * A_0 + 2/3 * A_1
    """
    w0, w1 = 15 / 56, 2 / 3
    expected = torch.tensor([[[w0 * 1, w0 * 2 + w1], [w0 * 3 + w1, 0.0]]])
    result = compute_cam("gradcam++", A, G)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)


def test_gradcam_plus_plus_masks_zero_gradients():
    zero = compute_cam("gradcam++", A, torch.zeros_like(G))
    assert torch.isfinite(zero).all() and torch.equal(zero, torch.zeros(1, 2, 2))
    # A denominator of exactly zero away from G = 0: G = -2/S makes 2G^2 + S G^3 vanish.
    grad = torch.zeros_like(G)
    grad[0, 0, 0, 0] = -2 / 6
    result = compute_cam("gradcam++", A, grad)
    assert torch.isfinite(result).all() and torch.equal(result, torch.zeros(1, 2, 2))


def test_other_methods_by_hand():
    # Grad-CAM: w_0 = mean G_0 = 2/4 = 1/2, w_1 = 1/2.
    gradcam = torch.tensor([[[0.5, 1.5], [2.0, 0.0]]])
    # XGrad-CAM: w_0 = (1*1 + 2*-1 + 3*2) / 6 = 5/6, w_1 = (0.5 + 0.5) / 2 = 1/2.
    xgradcam = torch.tensor([[[5 / 6, 5 / 3 + 0.5], [2.5 + 0.5, 0.0]]])
    # HiResCAM: sum_c G*A = [[1, -2 + 0.5], [6 + 0.5, 0]] -> ReLU.
    hirescam = torch.tensor([[[1.0, 0.0], [6.5, 0.0]]])
    # LayerCAM: sum_c relu(G)*A = [[1, 0 + 0.5], [6 + 0.5, 0]].
    layercam = torch.tensor([[[1.0, 0.5], [6.5, 0.0]]])
    for method, expected in [
        ("gradcam", gradcam),
        ("xgradcam", xgradcam),
        ("hirescam", hirescam),
        ("layercam", layercam),
    ]:
        torch.testing.assert_close(compute_cam(method, A, G), expected, atol=1e-6, rtol=0)


def test_compute_cam_is_float32_for_half_inputs():
    result = compute_cam("gradcam++", A.to(torch.bfloat16), G.to(torch.bfloat16))
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, compute_cam("gradcam++", A, G), atol=1e-2, rtol=0)


def test_normalize_maps_min_max_and_flat_maps():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])
    torch.testing.assert_close(
        normalize_maps(maps), torch.tensor([[[0.0, 0.5], [0.25, 1.0]]]), atol=1e-6, rtol=0
    )
    for flat in (torch.zeros(2, 3, 4), torch.full((2, 3, 4), 5.0)):
        out = normalize_maps(flat)
        assert not out.isnan().any() and torch.equal(out, torch.zeros_like(flat))


@pytest.mark.parametrize("scale", [1e-9, 1.0, 1e6])
def test_normalize_maps_is_scale_invariant(scale):
    """Grad-CAM++ drops the positive factor exp(S) on the grounds that normalised maps do
    not depend on the scale: so a map of a randomly initialised deep net (values ~1e-9)
    must normalise like any other."""
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])
    torch.testing.assert_close(
        normalize_maps(maps * scale), normalize_maps(maps), atol=1e-5, rtol=0
    )


def test_upsample_is_bilinear_to_the_input_size():
    maps = torch.arange(4.0).reshape(1, 1, 2, 2)
    out = upsample_maps(maps, (6, 4))
    expected = F.interpolate(maps, size=(6, 4), mode="bilinear", align_corners=False)
    assert out.shape == (1, 1, 6, 4)
    torch.testing.assert_close(out, expected)
