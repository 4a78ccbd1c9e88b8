"""DetectionCAM on torchvision detectors: all five families, random init, threshold 0.

Exactness is checked against the model's own tensors, read by this test's own hooks: the
reported boxes, scores and labels are the model's output rows, in order; ``target_score`` is
the recovered proposal row's / anchor's class logit, and the detector's own activation of it
(softmax, sigmoid, FCOS's centerness product) gives back the reported score.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops.boxes import clip_boxes_to_image

from lightning_gradcam.detection import DetectionCAM

from .tiny import FAMILIES, images, tiny_detector


@pytest.fixture(scope="module")
def detectors() -> dict[str, nn.Module]:
    return {family: tiny_detector(family) for family in FAMILIES}


class _Outputs:
    """Test-side forward hooks recording module outputs (every call)."""

    def __init__(self, **modules: nn.Module):
        self.modules = modules
        self.outputs: dict[str, list] = {name: [] for name in modules}

    def __enter__(self):
        self.handles = [
            module.register_forward_hook(
                lambda _m, _i, out, name=name: self.outputs[name].append(out)
            )
            for name, module in self.modules.items()
        ]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def _own_outputs(model: nn.Module, batch: list[torch.Tensor]):
    """The model's eval outputs and the raw class scores, read by the test's own hooks."""
    model.eval()
    if hasattr(model, "roi_heads"):
        hooks = _Outputs(predictor=model.roi_heads.box_predictor)
    else:
        hooks = _Outputs(head=model.head)
        if hasattr(model.head.classification_head, "cls_logits"):
            hooks.modules["level"] = model.head.classification_head.cls_logits
            hooks.outputs["level"] = []
    with hooks, torch.no_grad():
        outputs = model(batch)
    return outputs, hooks.outputs


@pytest.mark.parametrize("family", FAMILIES)
def test_detections_are_the_models_own_and_target_score_is_their_logit(detectors, family):
    model = detectors[family]
    batch = images()
    outputs, raw = _own_outputs(model, batch)
    cam = DetectionCAM(model, methods=("gradcam", "gradcam++", "hirescam"))
    result = cam.explain(batch, max_detections=6)

    assert len(result) == 2
    for index, (dets, output, image) in enumerate(zip(result, outputs, batch)):
        assert len(dets) == min(6, len(output["scores"])) > 0
        for rank, det in enumerate(dets):
            assert det.image_index == index and det.rank == rank
            assert torch.equal(det.box, output["boxes"][rank])
            assert det.score == float(output["scores"][rank])
            assert det.class_id == int(output["labels"][rank])
            for method, full in det.maps.items():
                assert full.shape == image.shape[-2:], method
                assert float(full.min()) >= 0.0 and float(full.max()) <= 1.0
            if family.endswith("rcnn"):
                class_logits, _ = raw["predictor"][0]
                row = class_logits[det.roi_row]
                assert det.target_score == pytest.approx(float(row[det.class_id]), abs=1e-6)
                assert float(F.softmax(row, -1)[det.class_id]) == pytest.approx(det.score, 1e-5)
                continue
            head = raw["head"][0]
            if family.startswith("ssd"):
                row = head["cls_logits"][index, det.anchor_index]
                assert det.target_score == pytest.approx(float(row[det.class_id]), abs=1e-6)
                assert float(F.softmax(row, -1)[det.class_id]) == pytest.approx(det.score, 1e-5)
                continue
            # Level offsets from the per-level logit convs: H * W * A rows each.
            classes = head["cls_logits"].shape[-1]
            sizes = [o.shape[1] // classes * o.shape[2] * o.shape[3] for o in raw["level"]]
            row_index = sum(sizes[: det.level]) + det.anchor_index
            logit = head["cls_logits"][index, row_index, det.class_id]
            assert det.target_score == pytest.approx(float(logit), abs=1e-6)
            score = torch.sigmoid(logit)
            if family == "fcos":
                score = torch.sqrt(score * torch.sigmoid(head["bbox_ctrness"][index, row_index, 0]))
            assert float(score) == pytest.approx(det.score, 1e-5)


def test_two_stage_proposal_is_the_row_that_decodes_to_the_box(detectors):
    model = detectors["faster_rcnn"]
    batch = images()
    _, raw = _own_outputs(model, batch)
    _, box_regression = raw["predictor"][0]
    with torch.no_grad():
        resized = model.transform(batch)[0].image_sizes
    checked = 0
    for dets in DetectionCAM(model).explain(batch, max_detections=4):
        for det in dets:
            # The pooled proposal back in the network's pixels, decoded with its row's
            # regression for its class, clipped, and rescaled: the reported box.
            original = batch[det.image_index].shape[-2:]
            size = resized[det.image_index]
            proposal = resize_boxes(det.proposal_box[None], original, size)
            decoded = model.roi_heads.box_coder.decode(
                box_regression[det.roi_row][None], [proposal]
            )[0, det.class_id]
            decoded = clip_boxes_to_image(decoded[None], size)
            box = resize_boxes(decoded, size, original)[0]
            assert torch.allclose(box, det.box, atol=1e-2), (box, det.box)
            checked += 1
    assert checked == 8


def test_per_roi_maps_stay_inside_their_own_proposal(detectors):
    result = DetectionCAM(detectors["faster_rcnn"]).explain(images(), max_detections=8)
    for dets in result:
        for det in dets:
            full = det.maps["gradcam"]
            x0, y0, x1, y1 = det.proposal_box.tolist()
            ys, xs = torch.nonzero(full > 0, as_tuple=True)
            if len(xs):
                assert float(xs.min()) >= x0 - 1 and float(xs.max()) <= x1 + 1
                assert float(ys.min()) >= y0 - 1 and float(ys.max()) <= y1 + 1
            assert det.layer_kinds[det.layer] == "roi"
            assert det.layer_maps["gradcam"].shape == (7, 7)


def test_hirescam_at_an_image_level_layer_differs_per_detection(detectors):
    model = detectors["retinanet"]
    cam = DetectionCAM(model, layer="backbone.body.layer3", methods=("hirescam",))
    dets = cam.explain(images()[:1], max_detections=5)[0]
    assert {d.layer_kinds["backbone.body.layer3"] for d in dets} == {"image"}
    maps = torch.stack([d.maps["hirescam"] for d in dets])
    assert any(not torch.allclose(maps[0], m, atol=1e-3) for m in maps[1:])


def _snapshot(model: nn.Module):
    return {
        "classes": [type(m) for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet", "ssdlite"])
def test_the_model_comes_out_exactly_as_it_went_in(family):
    model = tiny_detector(family, seed=3)
    model.train()
    model.backbone.eval()  # a user's own mix of modes is kept too
    before = _snapshot(model)
    rng = torch.get_rng_state()
    batch = images(seed=1)
    model.eval()
    with torch.no_grad():
        reference = model(batch)
    model.train()
    model.backbone.eval()

    layers = (
        None if family != "retinanet" else ["head.classification_head.conv", "backbone.body.layer4"]
    )
    DetectionCAM(model, layer=layers).explain(batch, max_detections=4)

    after = _snapshot(model)
    assert after["classes"] == before["classes"]
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert "postprocess_detections" not in vars(module)
    model.eval()
    with torch.no_grad():
        again = model(batch)
    for a, b in zip(reference, again):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_errors_say_what_to_pass(detectors):
    model = detectors["faster_rcnn"]
    with pytest.raises(TypeError, match="torchvision detectors"):
        DetectionCAM(nn.Conv2d(3, 3, 1))
    cam = DetectionCAM(model)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        cam.explain([torch.rand(1, 32, 32)])
    with pytest.raises(ValueError, match="empty"):
        cam.explain([])
    with pytest.raises(ValueError, match="float"):
        cam.explain([torch.zeros(3, 32, 32, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"not a \(N, C, h, w\)"):
        DetectionCAM(model, layer="roi_heads.box_head").explain(images(), max_detections=2)
    with pytest.raises(TypeError, match="OrderedDict"):  # the FPN's dict of levels
        DetectionCAM(model, layer="backbone").explain(images(), max_detections=2)
    with pytest.raises(ValueError, match="ran 3 times"):  # the RPN head, once per FPN level
        DetectionCAM(model, layer="rpn.head.conv").explain(images(), max_detections=2)
    with pytest.raises(ValueError, match="no layer named"):
        DetectionCAM(model, layer="roi_heads.nope")
    with pytest.raises(ValueError, match="guided"):
        DetectionCAM(model, methods=("guided_gradcam",))


def test_no_detections_give_empty_lists():
    model = tiny_detector("retinanet", seed=4)
    model.score_thresh = 1.1  # nothing passes
    result = DetectionCAM(model).explain(images(), max_detections=3)
    assert result == [[], []]


def test_two_stage_image_level_gradients_equal_a_plain_backward_per_detection(detectors):
    """The pull-back through ROIAlign for the detections' rows alone gives exactly the
    gradient of each detection's logit at the layer (checked by one backward each)."""
    model = detectors["faster_rcnn"].eval()
    layer = "backbone.body.13"
    batch = images()
    dets = [
        d
        for per in DetectionCAM(model, layer=layer, methods=("hirescam", "gradcam")).explain(
            batch, max_detections=3
        )
        for d in per
    ]
    module = dict(model.named_modules())[layer]
    recorded = {}

    def keep(_m, _i, out):
        recorded["act"] = out
        return None

    with _Outputs(predictor=model.roi_heads.box_predictor) as hooks, torch.enable_grad():
        handle = module.register_forward_hook(keep)
        try:
            model(batch)
        finally:
            handle.remove()
    class_logits, _ = hooks.outputs["predictor"][0]
    act = recorded["act"]
    peaks = []
    for det in dets:
        (grad,) = torch.autograd.grad(
            class_logits[det.roi_row, det.class_id], act, retain_graph=True
        )
        a, g = act[det.image_index].detach(), grad[det.image_index]
        hires = torch.relu((a * g).sum(0))
        cam = torch.relu((a * g.mean(dim=(1, 2), keepdim=True)).sum(0))
        assert det.layer_kinds[layer] == "image"
        scale = float(hires.abs().max()) + 1e-30
        assert torch.allclose(det.layer_maps["hirescam"], hires, atol=1e-4 * scale)
        scale = float(cam.abs().max()) + 1e-30
        assert torch.allclose(det.layer_maps["gradcam"], cam, atol=1e-4 * scale)
        peaks.append(float(hires.max()))
    assert len(peaks) == 6 and max(peaks) > 0  # not all trivially zero
