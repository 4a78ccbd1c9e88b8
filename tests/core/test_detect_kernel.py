"""The detection kernel (core/detect) against plain autograd, one gradient at a time."""

import pytest
import torch
from torch import nn
from torchvision.ops import roi_align

from lightning_gradcam.core.detect import (
    InputRecorder,
    level_gradients,
    own_gradients,
    pooler_pullback,
    pull_back_to_layer,
)


def _one(score, tensor):
    return torch.autograd.grad(score, tensor, retain_graph=True)[0]


def test_own_gradients_match_one_backward_each_with_shared_rows():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(3, 3, 6, 6, requires_grad=True)
    out = conv(x)
    owners = [0, 2, 0, 1, 2]  # two detections of image 0 and of image 2: two rounds
    targets = torch.stack([out[o, d % 4, d, d] for d, o in enumerate(owners)])
    grads = own_gradients(targets, owners, x)
    for d, owner in enumerate(owners):
        torch.testing.assert_close(grads[d], _one(targets[d], x)[owner])


def test_own_gradients_refuse_a_tensor_the_targets_do_not_reach():
    x = torch.randn(2, 3, requires_grad=True)
    other = torch.randn(2, 3, requires_grad=True)
    targets = (x**2).sum(dim=1)
    try:
        own_gradients(targets, [0, 1], other, name="rpn")
    except ValueError as error:
        assert "rpn" in str(error)
    else:
        raise AssertionError("no error for an unreached tensor")


def test_level_gradients_and_pull_back_match_autograd():
    torch.manual_seed(0)
    stem = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    layer = stem(x)
    levels_in = [layer * 2, nn.functional.avg_pool2d(layer, 2)]
    head = nn.Conv2d(4, 5, 3, padding=1)
    logits = [head(f) for f in levels_in]
    picks = [(0, 0, 1, 2, 3), (1, 1, 2, 1, 1), (0, 1, 4, 0, 0), (0, 0, 0, 5, 5)]
    targets = torch.stack([logits[lv][img, c, i, j] for lv, img, c, i, j in picks])
    levels = [p[0] for p in picks]
    images = torch.tensor([p[1] for p in picks])
    _, grads = level_gradients(targets, levels, images, levels_in)
    reader_grads = []
    for lv in range(2):
        g = torch.zeros(len(picks), *levels_in[lv].shape[1:])
        for d in range(len(picks)):
            if levels[d] == lv:
                g[d] = grads[d]
        reader_grads.append(g)
    at_layer = pull_back_to_layer("stem", layer, levels_in, reader_grads, images, targets)
    for d, (_, img, *_) in enumerate(picks):
        torch.testing.assert_close(at_layer[d], _one(targets[d], layer)[img])


def test_pooler_pullback_matches_autograd_through_the_pooler():
    torch.manual_seed(0)
    features = [torch.randn(2, 4, 16, 16, requires_grad=True)]

    def pool(feats, boxes, _images):
        rois = torch.cat(
            [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
        )
        return roi_align(feats[0], rois, (3, 3), spatial_scale=1.0, aligned=True)

    boxes = torch.tensor([[1.0, 1.0, 9.0, 9.0], [4.0, 2.0, 15.0, 12.0], [0.0, 0.0, 6.0, 6.0]])
    image_of = torch.tensor([0, 1, 1])
    pooled = pool(features, [boxes[:1], boxes[1:]], image_of)
    row_grads = torch.randn(3, 4, 3, 3)
    (grads,) = pooler_pullback(pool, row_grads, features, boxes, image_of)
    for d in range(3):
        (expected,) = torch.autograd.grad(
            (pooled[d] * row_grads[d]).sum(), features[0], retain_graph=True
        )
        torch.testing.assert_close(grads[d], expected[image_of[d]])


def test_input_recorder_keeps_inputs_and_removes_its_hook():
    module = nn.Conv2d(3, 2, 1)
    with InputRecorder(module) as recorder:
        module(torch.randn(1, 3, 5, 7))
    assert recorder.input_size() == (5, 7)
    assert recorder.output.requires_grad
    assert not module._forward_hooks


def test_own_gradients_in_groups_match_one_backward_each():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    levels = [nn.Conv2d(3, 4, 3, padding=1)(x), nn.Conv2d(3, 4, 3, stride=2, padding=1)(x)]
    picks = [(0, 0, 1), (1, 0, 2), (0, 0, 3), (1, 1, 0), (0, 1, 2)]  # (level, image, channel)
    targets = torch.stack([levels[lv][img, c].sum() for lv, img, c in picks])
    grads = own_gradients(targets, [p[1] for p in picks], x, "x", groups=[p[0] for p in picks])
    for d, (_, img, _) in enumerate(picks):
        torch.testing.assert_close(grads[d], _one(targets[d], x)[img])


def test_pooler_pullback_with_the_sides_levels_copies_one_level_and_agrees():
    torch.manual_seed(0)
    features = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)]

    def pool(feats, boxes, _images):
        # small boxes from level 0, large ones from level 1 (scale 1/2)
        out = []
        for i, b in enumerate(boxes):
            level = 0 if float(b[0, 2] - b[0, 0]) < 8 else 1
            roi = torch.cat([torch.full((1, 1), float(i)), b], 1)
            out.append(roi_align(feats[level], roi, (2, 2), 1.0 / (1 + level), aligned=True))
        return torch.cat(out)

    boxes = torch.tensor([[1.0, 1.0, 6.0, 6.0], [2.0, 2.0, 14.0, 14.0], [0.0, 3.0, 5.0, 7.0]])
    image_of = torch.tensor([1, 0, 1])
    row_grads = torch.randn(3, 4, 2, 2)
    every = pooler_pullback(pool, row_grads, features, boxes, image_of)
    by_level = pooler_pullback(pool, row_grads, features, boxes, image_of, torch.tensor([0, 1, 0]))
    for a, b in zip(every, by_level):
        torch.testing.assert_close(a, b)
    assert every[1][0].abs().sum() == 0 and every[1][1].abs().sum() > 0
    with pytest.raises(RuntimeError, match="read other levels"):
        pooler_pullback(pool, row_grads, features, boxes, image_of, torch.tensor([1, 1, 0]))
