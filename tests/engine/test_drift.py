"""core.drift: map drift, box masks, energy share."""

from __future__ import annotations

import pytest
import torch

from lightning_gradcam.core.drift import box_masks, energy_in_boxes, energy_share, map_drift


def test_drift_is_zero_for_same_pattern_any_scale_and_two_for_inverted():
    torch.manual_seed(0)
    a = torch.rand(3, 8, 8)
    assert torch.allclose(map_drift(a, a), torch.zeros(3), atol=1e-6)
    assert torch.allclose(map_drift(a, 3 * a + 1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(map_drift(a, 1 - a), torch.full((3,), 2.0), atol=1e-6)


def test_drift_matches_one_minus_pearson():
    torch.manual_seed(1)
    a, b = torch.rand(4, 5, 6), torch.rand(4, 5, 6)
    expected = torch.stack(
        [1 - torch.corrcoef(torch.stack([a[i].flatten(), b[i].flatten()]))[0, 1] for i in range(4)]
    )
    assert torch.allclose(map_drift(a, b), expected.float(), atol=1e-5)


def test_drift_flat_map_conventions():
    flat = torch.zeros(2, 4, 4)
    pattern = torch.rand(2, 4, 4)
    assert torch.equal(map_drift(flat, flat), torch.zeros(2))
    assert torch.equal(map_drift(pattern, flat), torch.ones(2))
    assert not torch.isnan(map_drift(torch.full((2, 4, 4), float("nan")), flat)).any()


def test_drift_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        map_drift(torch.rand(2, 4, 4), torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        map_drift(torch.rand(4, 4), torch.rand(4, 4))


def test_box_masks_use_pixel_centres_and_unions():
    masks = box_masks(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), (6, 6))
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[2:4, 1:3] = True  # centres 2.5, 3.5 in y; 1.5, 2.5 in x
    assert torch.equal(masks[0], expected)
    union = box_masks([torch.tensor([[0, 0, 1, 1], [5, 5, 6, 6]]), torch.zeros(0, 4)], (6, 6))
    assert union[0].sum() == 2 and union[0, 0, 0] and union[0, 5, 5]
    assert not union[1].any()


def test_energy_share_inside_box():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 3.0
    maps[0, 3, 3] = 1.0
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    share = energy_in_boxes(maps, boxes)
    assert share[0] == pytest.approx(0.75)
    assert share[1] == 0.0  # an all-zero map has no energy anywhere
    full = energy_share(torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    assert full[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="masks must have the maps' shape"):
        energy_share(maps, torch.ones(2, 3, 3))
