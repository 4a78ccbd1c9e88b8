"""lightning_gradcam.DetectionCAM takes the options every detection side takes (score=,
reshape=, choose=, methods=), checked before any forward; one-stage image-level gradients are
each detection's own (a plain backward each)."""

from __future__ import annotations

import pytest
import torch

from lightning_gradcam.detection import DetectionCAM
from lightning_gradcam.detection.heads import (
    detector_family,
    recording_postprocess,
    recover_origins,
)

from .tiny import images, tiny_detector


@pytest.fixture(scope="module")
def retinanet():
    return tiny_detector("retinanet").eval()


def test_score_probability_differentiates_the_reported_score(retinanet):
    logit = DetectionCAM(retinanet).explain(images(), max_detections=3)
    prob = DetectionCAM(retinanet, score="probability").explain(images(), max_detections=3)
    for per_logit, per_prob in zip(logit, prob):
        for a, b in zip(per_logit, per_prob):
            assert b.target_score == pytest.approx(b.score, abs=1e-6)
            assert a.target_score == pytest.approx(
                float(torch.logit(torch.tensor(a.score))), abs=1e-4
            )
            # the probability's gradient is the logit's times the sigmoid's derivative
            assert not torch.equal(a.layer_maps["gradcam"], b.layer_maps["gradcam"])


def test_reshape_is_applied_at_image_level_layers(retinanet):
    layer = "backbone.body.layer3"
    plain = DetectionCAM(retinanet, layer=layer, methods=("hirescam",))
    flipped = DetectionCAM(
        retinanet, layer=layer, methods=("hirescam",), reshape=lambda t: t.flip(-1)
    )
    for a, b in zip(plain.explain(images(), 2)[0], flipped.explain(images(), 2)[0]):
        torch.testing.assert_close(b.layer_maps["hirescam"], a.layer_maps["hirescam"].flip(-1))


def test_choose_picks_rows_in_its_order(retinanet):
    chosen = DetectionCAM(retinanet).explain(images(), choose=lambda outs: [[4, 1], []])
    assert [d.rank for d in chosen[0]] == [4, 1] and chosen[1] == []


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({"score": "prob"}, ValueError, "score must be 'logit'"),
        ({"reshape": 3}, TypeError, "reshape must be a callable"),
        ({"methods": ("guided_backprop",)}, ValueError, "guided"),
    ],
)
def test_bad_options_fail_at_construction(retinanet, kwargs, error, says):
    with pytest.raises(error, match=says):
        DetectionCAM(retinanet, **kwargs)


def test_bad_choose_fails_before_the_forward(retinanet):
    with pytest.raises(TypeError, match="choose must be None"):
        DetectionCAM(retinanet).explain(images(), choose=[[0]])
    with pytest.raises(ValueError, match="choose returned rows"):
        DetectionCAM(retinanet).explain(images(), choose=lambda outs: [[99], []])


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_one_stage_image_level_gradients_are_each_detections_own(family):
    """Per-level logits and per-level rounds give exactly one plain backward per detection."""
    model = tiny_detector(family).eval()
    model.detections_per_img = 300  # deep enough to reach the coarser levels
    layer = "backbone.body.layer3"
    batch = images()
    with recording_postprocess(model, detector_family(model)) as record, torch.no_grad():
        outputs = model(batch)
    origins = recover_origins(
        model, detector_family(model), record, [list(range(len(o["scores"]))) for o in outputs]
    )
    # Two detections of every level of each image: rounds in several levels, two per level.
    rows = []
    for per in origins:
        by_level: dict[int, list[int]] = {}
        for origin in per:
            by_level.setdefault(origin.level, []).append(origin.rank)
        rows.append([rank for ranks in by_level.values() for rank in ranks[:2]])
    cam = DetectionCAM(model, layer=layer, methods=("hirescam",))
    dets = [d for per in cam.explain(batch, choose=lambda _outs: rows) for d in per]
    assert len({d.level for d in dets}) > 1  # several levels: the rounds are per level
    recorded = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, out: recorded.setdefault("act", out))
    head = model.head.classification_head
    handle2 = head.register_forward_hook(lambda _m, _i, out: recorded.setdefault("logits", out))
    try:
        with torch.enable_grad():
            model(batch)
    finally:
        handle.remove()
        handle2.remove()
    act, logits = recorded["act"], recorded["logits"]  # logits (N, sum_l HWA_l, K)
    peaks = []
    for det in dets:
        offset = _level_offset(model, batch, det.level)
        target = logits[det.image_index, offset + det.anchor_index, det.class_id]
        assert float(target) == pytest.approx(det.target_score, abs=1e-5)
        (grad,) = torch.autograd.grad(target, act, retain_graph=True)
        expected = torch.relu((act[det.image_index] * grad[det.image_index]).sum(0)).detach()
        scale = float(expected.abs().max()) + 1e-30
        assert torch.allclose(det.layer_maps["hirescam"], expected, atol=1e-4 * scale)
        peaks.append(float(expected.max()))
    assert max(peaks) > 0


def _level_offset(model, batch, level: int) -> int:
    """Rows of the concatenated head output before ``level``'s (H * W * A per level)."""
    with torch.no_grad():
        image_list, _ = model.transform(batch)
        features = list(model.backbone(image_list.tensors).values())
    anchors = model.anchor_generator.num_anchors_per_location()[0]
    return sum(int(f.shape[-2] * f.shape[-1]) * anchors for f in features[:level])
