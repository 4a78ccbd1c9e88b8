"""Detectron2CAM: exact targets, maps equal to a per-detection reference, locality, no trace."""

from __future__ import annotations

import pytest
import torch
from d2_helpers import build, make_inputs, recording
from torch import nn

from detectron2_hooks import Detectron2CAM
from detectron2_hooks.explain import paste_in_boxes
from lightning_gradcam.core.drift import energy_in_boxes
from lightning_gradcam.core.layers import LayerNotFoundError
from lightning_gradcam.core.methods import compute_cam, method_names

LAYERS = {
    "c4": ["roi_heads.res5", "roi_heads.pooler", "backbone.res4", "backbone.res3"],
    "fpn": ["roi_heads.box_pooler", "backbone.fpn_output2", "backbone.bottom_up.res4"],
    "retinanet": [
        "head.cls_subnet.0",
        "head.cls_subnet.7",
        "head.cls_score",
        "backbone.fpn_output4",
    ],
}
KINDS_OF = {
    "roi_heads.res5": "roi",
    "roi_heads.pooler": "roi",
    "roi_heads.box_pooler": "roi",
    "head.cls_subnet.0": "head",
    "head.cls_subnet.7": "head",
    "head.cls_score": "head",
}
METHODS = method_names(detectors=True)


def _reference_forward(model, inputs):
    if hasattr(model, "head"):
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        return model.forward_inference(images, features, model.head(features))
    return model.inference(inputs, do_postprocess=False)


@pytest.fixture(
    scope="module",
    params=[("c4", 1), ("c4", 2), ("fpn", 1), ("fpn", 2), ("retinanet", 1), ("retinanet", 2)],
    ids=lambda p: f"{p[0]}-b{p[1]}",
)
def explained(request, models):
    kind, batch = request.param
    model = models[kind]
    inputs = make_inputs(batch)
    # The probability: the per-detection reference below differentiates the reported score
    # (the logit is checked against the model's own head in test_d2_postprocess.py).
    cam = Detectron2CAM(model, LAYERS[kind], methods=METHODS, score="probability")
    out = cam.explain(inputs, max_detections=3)
    return kind, model, inputs, out


def test_results_shape_range_and_order(explained):
    kind, _model, inputs, out = explained
    assert len(out) == len(inputs)
    for image_index, (dets, item) in enumerate(zip(out, inputs)):
        assert 1 <= len(dets) <= 3
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
        for det in dets:
            assert det.image_index == image_index
            assert det.layer == LAYERS[kind][0] and det.maps is det.maps_by_layer[det.layer]
            assert (det.level is None) == (kind != "retinanet")
            assert (det.proposal_index is None) == (kind == "retinanet")
            for layer in LAYERS[kind]:
                assert det.layer_kinds[layer] == KINDS_OF.get(layer, "image")
                assert set(det.maps_by_layer[layer]) == set(METHODS)
                for cam in det.maps_by_layer[layer].values():
                    assert cam.shape == item["image"].shape[1:] and cam.dtype == torch.float32
                    assert cam.min() >= 0 and cam.max() <= 1


def test_target_score_is_the_reported_score_and_maps_match_a_per_detection_loop(explained):
    """Recompute every detection's gradient with its own backward (the slow, obvious way):
    the targets, the locality of each gradient and the maps must agree with Detectron2CAM."""
    kind, model, inputs, out = explained
    names = LAYERS[kind]
    with torch.enable_grad(), recording(model, names) as calls:
        instances = _reference_forward(model, inputs)
    for det in (d for dets in out for d in dets):
        inst = instances[det.image_index]
        reported = inst.scores[det.rank]
        assert abs(det.target_score - det.score) <= 1e-6
        assert abs(det.score - float(reported.detach())) <= 1e-6
        assert det.class_id == int(inst.pred_classes[det.rank])
        flat = [t for name in names for t in calls[name]]
        grads = dict(
            zip(
                map(id, flat),
                torch.autograd.grad(reported, flat, retain_graph=True, allow_unused=True),
            )
        )
        for name in names:
            kind_of = det.layer_kinds[name]
            if kind_of == "roi":
                act = calls[name][0]
                grad = grads[id(act)]
                own = det.roi_row
                assert grad[own].abs().sum() > 0
                others = torch.ones(len(grad), dtype=torch.bool)
                others[own] = False
                assert grad[others].abs().max() == 0  # only the detection's own ROI row
                a, g = act[own], grad[own]
            elif kind_of == "head":
                for level, act in enumerate(calls[name]):
                    grad = grads[id(act)]
                    if level != det.level:
                        assert grad is None or grad.abs().max() == 0  # only its own level
                act = calls[name][det.level]
                grad = grads[id(act)]
                assert grad[det.image_index].abs().sum() > 0
                a, g = act[det.image_index], grad[det.image_index]
            else:
                act = calls[name][0]
                grad = grads[id(act)]
                grad = torch.zeros_like(act) if grad is None else grad
                a, g = act[det.image_index], grad[det.image_index]
            if len(inputs) == 2 and kind_of != "roi":
                assert (
                    grads[id(act)] is None or grads[id(act)][1 - det.image_index].abs().max() == 0
                )
            for method in METHODS:
                expected = compute_cam(method, a[None].detach(), g[None].detach())[0]
                got = det.layer_maps_by_layer[name][method]
                scale = float(expected.abs().max()) or 1.0
                torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * scale)


def _explain_zeroed(zeroed_models, kind, layers, methods=("gradcam", "hirescam")):
    return Detectron2CAM(zeroed_models[kind], layers, methods=methods).explain(
        make_inputs(2), max_detections=6
    )


def _energies(out, layer, method):
    return [
        float(energy_in_boxes(d.maps_by_layer[layer][method][None], d.box[None])[0])
        for dets in out
        for d in dets
        if d.maps_by_layer[layer][method].max() > 0
    ]


@pytest.mark.parametrize("kind,layer", [("c4", "roi_heads.res5"), ("fpn", "roi_heads.box_pooler")])
def test_per_roi_gradcam_lies_in_its_own_box(zeroed_models, kind, layer):
    out = _explain_zeroed(zeroed_models, kind, [layer], methods=("gradcam",))
    for det in (d for dets in out for d in dets):
        torch.testing.assert_close(det.box, det.proposal_box)  # zero regression: box = proposal
    energies = _energies(out, layer, "gradcam")
    assert len(energies) >= 4
    assert min(energies) >= 0.99


@pytest.mark.parametrize(
    "kind,layer",
    [("c4", "backbone.res4"), ("fpn", "backbone.fpn_output2"), ("retinanet", "head.cls_subnet.7")],
)
def test_elementwise_map_is_instance_specific_at_image_level_and_head_layers(
    zeroed_models, kind, layer
):
    """hirescam keeps most of each map in the detection's own box; channel-averaged Grad-CAM
    at the same layer spreads over the image (the reason hirescam is offered there)."""
    out = _explain_zeroed(zeroed_models, kind, [layer])
    hires = _energies(out, layer, "hirescam")
    assert len(hires) >= 4
    assert min(hires) > 0.5
    spread = _energies(out, layer, "gradcam")
    assert sum(spread) / len(spread) < sum(hires) / len(hires) - 0.2


def test_paste_in_boxes_geometry():
    maps = torch.ones(2, 3, 3)
    boxes = torch.tensor([[2.0, 4.0, 6.0, 5.0], [0.0, 0.0, 10.0, 8.0]])
    pasted = paste_in_boxes(maps, boxes, (8, 10))
    assert pasted[0].sum() == 4 and pasted[0, 4, 2:6].sum() == 4
    assert pasted[1].sum() == 80


# ---------------------------------------------------------------------------- no trace


def _snapshot(model):
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "rng": torch.get_rng_state(),
    }


def _assert_same(before, after):
    assert before["modes"] == after["modes"]
    assert before["requires_grad"] == after["requires_grad"]
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert all(torch.equal(v, after["state"][k]) for k, v in before["state"].items())
    assert before["hooks"] == after["hooks"]
    assert torch.equal(before["rng"], after["rng"])


@pytest.mark.parametrize("kind", ["c4", "retinanet"])
def test_no_trace_on_success_and_on_error(kind):
    model = build(kind, seed=3)
    model.train()
    frozen_bn_like = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    frozen_bn_like.eval()  # a submodule kept in eval inside a model in train mode
    params = list(model.parameters())
    params[-1].requires_grad_(False)
    params[0].grad = torch.full_like(params[0], 0.5)
    model.extra_unused = nn.Conv2d(3, 3, 1)  # a layer that never runs
    before = _snapshot(model)
    layer = "roi_heads.res5" if kind == "c4" else "head.cls_subnet.7"
    image_layer = "backbone.res4" if kind == "c4" else "backbone.fpn_output3"
    out = Detectron2CAM(model, [layer, image_layer]).explain(make_inputs(2), max_detections=2)
    assert sum(map(len, out)) > 0
    _assert_same(before, _snapshot(model))
    assert model.training
    with pytest.raises(ValueError, match="did not run"):
        Detectron2CAM(model, [layer, "extra_unused"]).explain(make_inputs(1))
    _assert_same(before, _snapshot(model))


def test_inference_mode_inputs_and_caller_context(models):
    inputs = make_inputs(1)
    with torch.inference_mode():
        frozen = [{"image": item["image"].clone()} for item in inputs]
        out = Detectron2CAM(models["c4"], "backbone.res4", methods=("hirescam",)).explain(frozen, 2)
    assert len(out[0]) == 2 and out[0][0].maps["hirescam"].max() > 0


# ---------------------------------------------------------------------------- errors


def test_empty_detections_give_empty_lists():
    model = build("c4", seed=0, score_thresh=1.0)
    out = Detectron2CAM(model).explain(make_inputs(2))
    assert out == [[], []]
    assert Detectron2CAM(build("retinanet", seed=0, score_thresh=1.0)).explain(make_inputs(1)) == [
        []
    ]
    assert Detectron2CAM(build("fpn")).explain(make_inputs(1), max_detections=0) == [[]]


def test_wrong_layer_name_lists_close_matches(models):
    with pytest.raises(LayerNotFoundError, match="roi_heads.res5"):
        Detectron2CAM(models["c4"], "roi_heads.res_5")


def test_layer_the_scores_do_not_depend_on(models):
    with pytest.raises(ValueError, match="do not depend"):
        Detectron2CAM(models["retinanet"], "head.bbox_subnet.0").explain(make_inputs(1), 2)
    with pytest.raises(ValueError, match="do not depend"):
        Detectron2CAM(models["c4"], "proposal_generator.rpn_head.conv").explain(make_inputs(1), 2)


def test_non_map_layer_and_guided_methods_are_refused(models):
    with pytest.raises(ValueError, match="not a \\(N, C, h, w\\) map"):
        Detectron2CAM(models["fpn"], "roi_heads.box_head.fc1").explain(make_inputs(1), 2)
    with pytest.raises(ValueError, match="guided"):
        Detectron2CAM(models["c4"], methods=("guided_gradcam",))
    with pytest.raises(ValueError, match="unknown"):
        Detectron2CAM(models["c4"], methods=("nope",))


def test_stock_model_is_refused(stock_models):
    for kind in ("c4", "fpn", "retinanet"):
        with pytest.raises(TypeError, match="to_cam_config"):
            Detectron2CAM(stock_models[kind])


def test_default_layers(models):
    assert Detectron2CAM(models["c4"]).layers == ("roi_heads.res5",)
    assert Detectron2CAM(models["fpn"]).layers == ("roi_heads.box_pooler",)
    assert Detectron2CAM(models["retinanet"]).layers == ("head.cls_subnet.7",)


def test_proposal_shared_by_two_classes_gets_two_separate_gradients(models):
    """Two detections of one proposal share a ROI row: each must still get its own gradient."""
    model = build("c4", seed=0, score_thresh=0.0)
    out = Detectron2CAM(model, ["roi_heads.res5", "backbone.res4"], methods=("hirescam",)).explain(
        make_inputs(1), max_detections=20
    )
    dets = out[0]
    rows = [d.roi_row for d in dets]
    shared = [r for r in set(rows) if rows.count(r) > 1]
    assert shared, "expected a proposal detected as two classes"
    pair = [d for d in dets if d.roi_row == shared[0]][:2]
    assert pair[0].class_id != pair[1].class_id
    for layer in ("roi_heads.res5", "backbone.res4"):
        assert not torch.allclose(
            pair[0].layer_maps_by_layer[layer]["hirescam"],
            pair[1].layer_maps_by_layer[layer]["hirescam"],
        )
