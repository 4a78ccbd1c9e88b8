"""Maps with no positive evidence are said, not drawn blank or counted as 0: a saturated
probability has a zero gradient (all-zero Grad-CAM) where its logit still explains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from d2_helpers import build, make_inputs
from hook_helpers import fake_trainer

from detectron2_hooks import Detectron2CAM, GradCAMHook
from lightning_gradcam.core.render import draw_boxes
from lightning_gradcam.pictures import detection_label, pass_pictures


@pytest.fixture(scope="module")
def saturated():
    """A tiny FPN Faster R-CNN whose classifier logits are scaled by 1000: every reported
    probability rounds to 1.0 (or 0), as in a confident detector."""
    model = build("fpn", seed=4)
    layer = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        layer.weight.mul_(1000.0)
        layer.bias.mul_(1000.0)
    return model


def _explain(model, score):
    cam = Detectron2CAM(model, methods=("gradcam", "gradcam++"), score=score)
    return [d for dets in cam.explain(make_inputs(2), max_detections=4) for d in dets]


def test_saturated_probability_is_marked_no_evidence_and_the_logit_explains(saturated):
    by_prob = _explain(saturated, "probability")
    assert by_prob and all(d.score == pytest.approx(1.0) for d in by_prob)
    for det in by_prob:
        assert det.evidence == {"gradcam": False, "gradcam++": False}
        assert det.no_evidence == ["gradcam", "gradcam++"]
        for cam in det.maps.values():
            assert float(cam.abs().max()) == 0.0  # exactly zero, never jitter
    by_logit = _explain(saturated, "logit")
    assert sum(d.evidence["gradcam"] for d in by_logit) >= len(by_logit) // 2 + 1
    for det in by_logit:
        if det.evidence["gradcam"]:
            assert float(det.maps["gradcam"].max()) > 0.5


def test_pictures_never_draw_maps_without_positive_evidence(saturated):
    dets = _explain(saturated, "probability")[:2]
    image = np.full((128, 160, 3), 90, np.uint8)
    kwargs = dict(layers=[dets[0].layer], methods=["gradcam"], step=5)
    marked = pass_pictures(image, dets, **kwargs)["gradcam"]
    # Without evidence, a cell is the image with the detection's box and label, no colour
    # map over it (a blank overlay would read "attention nowhere"); the caption says why.
    box_only = draw_boxes(image, dets[0].box[None], [detection_label(dets[0])])
    np.testing.assert_array_equal(marked[:128, :160], box_only)
    unmarked = [
        dataclasses.replace(d, evidence_by_layer={d.layer: {"gradcam": True, "gradcam++": True}})
        for d in dets
    ]
    plain = pass_pictures(image, unmarked, **kwargs)["gradcam"]
    assert marked.shape[1] == plain.shape[1]
    assert not np.array_equal(plain[:128, :160], box_only)  # marked as evidence: drawn
    rows = min(marked.shape[0], plain.shape[0])
    assert marked.shape != plain.shape or (marked[128:rows] != plain[128:rows]).any()


def test_hook_counts_maps_without_evidence_as_zero_energy_and_leaves_them_out_of_drift(saturated):
    inputs = make_inputs(1)
    hook = GradCAMHook(inputs=inputs, num_images=1, max_detections=3, score="probability")
    hook.trainer = fake_trainer(saturated, 0)
    hook.before_train()
    for step in (0, 1):
        hook.trainer.storage = type(hook.trainer.storage)(step)
        with hook.trainer.storage:
            hook.run()
    scalars = hook.history[-1]["scalars"]
    assert scalars["gradcam/image_00/num_detections"] >= 1
    # every map lacks evidence: no drift of 1 written; energy and pointing are there (for a
    # monitor), 0, and the rate says why
    assert not [k for k in scalars if "drift" in k]
    for method in ("gradcam", "gradcam++"):
        assert scalars[f"gradcam/image_00/{method}/energy_in_box"] == 0.0
        assert scalars[f"gradcam/image_00/{method}/pointing_game"] == 0.0
        assert scalars[f"gradcam/image_00/{method}/no_evidence_rate"] == 1.0
    hook = GradCAMHook(inputs=inputs, num_images=1, max_detections=3)  # the logit
    hook.trainer = fake_trainer(saturated, 0)
    hook.before_train()
    with hook.trainer.storage:
        hook.run()
    assert 0 < hook.history[-1]["scalars"]["gradcam/image_00/gradcam/energy_in_box"] <= 1
