"""Detectron2CAM on every model-zoo detector the adapters add (Cascade R-CNN, FCOS, PanopticFPN,
ViTDet), built tiny from the SHIPPED configs (YAML and LazyConfig), on a 2-image batch with
every detection explained.

Each detection is recomputed the slow, obvious way: one backward of the scalar Detectron2CAM
says it differentiated (``target_score``) to every call of every explained layer, with plain
forward hooks. The maps must agree, the gradient must sit only in the detection's own ROI row
(per-ROI layers: for a cascade, in the last stage's pooler call), at its own level (head
layers) or in its own image (image-level layers), and per-ROI maps must lie in the box that
was pooled (a cascade: the box the last stage pooled).
"""

from __future__ import annotations

import pytest
import torch
from d2_helpers import recording
from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.panoptic_fpn import PanopticFPN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes

from detectron2_hooks import CAMFCOS, CAMCascadeROIHeads, Detectron2CAM
from detectron2_hooks.tiny import tiny_lazy_config, tiny_zoo_config
from lightning_gradcam.core.methods import compute_cam

METHODS = ("gradcam", "gradcam++", "hirescam")

#: (config style, kind, [per-ROI or head layer, image-level layer]).
CASES = [
    ("yaml", "cascade", ["roi_heads.box_pooler", "backbone.fpn_output2"]),
    ("lazy", "cascade", ["roi_heads.box_pooler", "backbone.bottom_up.res4"]),
    ("lazy", "fcos", ["head.cls_subnet.11", "backbone.fpn_output3"]),
    ("yaml", "panoptic", ["roi_heads.box_pooler", "backbone.fpn_output2"]),
    ("lazy", "panoptic", ["roi_heads.box_pooler", "backbone.bottom_up.res3"]),
    ("lazy", "vitdet", ["roi_heads.box_pooler", "backbone.simfp_3"]),
]
IDS = [f"{style}-{kind}" for style, kind, _ in CASES]


def build(style: str, kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if style == "yaml":
        return build_model(tiny_zoo_config(kind)).eval()
    return instantiate(tiny_lazy_config(kind).model).eval()


def two_images() -> list[dict]:
    # Sizes <= 160 px (ViTDet's square_pad), different per image, fixed pixels.
    gen = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randint(0, 256, (3, 96, 128), generator=gen).float()},
        {"image": torch.randint(0, 256, (3, 128, 112), generator=gen).float()},
    ]


def reference_forward(model, inputs):
    """The model's own inference forward, scores on the graph, then detectron2's own
    ``detector_postprocess`` (which drops empty boxes), as the model's ``forward`` reports."""
    if hasattr(model, "head"):
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        raw = model.forward_inference(images, features, model.head(features))
    else:
        raw = model.inference(inputs, do_postprocess=False)
        raw = raw[0] if isinstance(model, PanopticFPN) else raw
    out = []
    for inst in raw:
        inst.pred_boxes = Boxes(inst.pred_boxes.tensor.detach().clone())  # scaled in place
        out.append(detector_postprocess(inst, *inst.image_size))  # no height/width given
    return out


class Explained:
    def __init__(self, style: str, kind: str, layers: list):
        self.style, self.kind = style, kind
        self.model = build(style, kind)
        self.inputs = two_images()
        cam = Detectron2CAM(self.model, layers, methods=METHODS)
        self.layers = cam.layers
        self.out = cam.explain(self.inputs, max_detections=None)


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def explained(request) -> Explained:
    return Explained(*request.param)


def test_every_detection_of_both_images_is_explained(explained):
    model, inputs = explained.model, explained.inputs
    with torch.no_grad():
        instances = reference_forward(model, inputs)
    assert [len(dets) for dets in explained.out] == [len(inst) for inst in instances]
    assert all(len(dets) > 0 for dets in explained.out), "the tiny model should detect"
    for image, (dets, item) in enumerate(zip(explained.out, inputs)):
        for det in dets:
            assert det.image_index == image
            for layer in explained.layers:
                for heat in det.maps_by_layer[layer].values():
                    assert heat.shape == item["image"].shape[1:]
                    assert 0 <= float(heat.min()) <= float(heat.max()) <= 1


def _differentiated(inst, rank: int, target_score: float) -> torch.Tensor:
    """The field of the raw Instances whose value is ``target_score`` (the reported score,
    or the class logit with ``score="logit"``)."""
    for name in ("scores", "cam_logit"):
        value = inst.get(name)[rank]
        if abs(float(value.detach()) - target_score) <= 1e-6:
            return value
    raise AssertionError(f"target_score {target_score} is neither the score nor the logit")


def test_target_score_is_the_differentiated_scalar_and_maps_match_a_loop(explained):
    model, inputs, names = explained.model, explained.inputs, explained.layers
    with torch.enable_grad(), recording(model, names) as calls:
        instances = reference_forward(model, inputs)
    cascade = isinstance(getattr(model, "roi_heads", None), CAMCascadeROIHeads)
    reached = dict.fromkeys(names, 0)  # detections an image-level layer is on the path of
    for det in (d for dets in explained.out for d in dets):
        inst = instances[det.image_index]
        assert det.score == pytest.approx(float(inst.scores[det.rank].detach()), abs=1e-6)
        target = _differentiated(inst, det.rank, det.target_score)
        flat = [t for name in names for t in calls[name]]
        grads = torch.autograd.grad(target, flat, retain_graph=True, allow_unused=True)
        grads = dict(zip(map(id, flat), grads))
        for name in names:
            kind_of = det.layer_kinds[name]
            if kind_of == "roi":
                call = int(inst.cam_pooler_call[det.rank]) if cascade else 0
                if cascade:
                    assert len(calls[name]) == model.roi_heads.num_cascade_stages
                    assert call == len(calls[name]) - 1  # the last stage's pooler call
                act = calls[name][call]
                grad = grads[id(act)]
                own = det.roi_row
                assert grad[own].abs().sum() > 0
                others = torch.ones(len(grad), dtype=torch.bool)
                others[own] = False
                assert grad[others].abs().max() == 0  # only the detection's own ROI row
                a, g = act[own], grad[own]
            elif kind_of == "head":
                assert isinstance(model, CAMFCOS)
                for level, act in enumerate(calls[name]):
                    grad = grads[id(act)]
                    if level != det.level:
                        assert grad is None or grad.abs().max() == 0  # only its own level
                act = calls[name][det.level]
                grad = grads[id(act)]
                a, g = act[det.image_index], grad[det.image_index]
                assert g.abs().sum() > 0
                assert grad[1 - det.image_index].abs().max() == 0
            else:
                (act,) = calls[name]
                grad = grads[id(act)]
                assert grad is not None and grad[1 - det.image_index].abs().max() == 0
                a, g = act[det.image_index], grad[det.image_index]
                reached[name] += bool(g.abs().sum() > 0)
            for method in METHODS:
                expected = compute_cam(method, a[None].detach(), g[None].detach())[0]
                got = det.layer_maps_by_layer[name][method]
                scale = float(expected.abs().max()) or 1.0
                torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * scale)
    # A layer that feeds one level only (``simfp_3``) has zero gradient for the detections
    # read at other levels; but some detections must be read through it.
    assert all(reached[name] > 0 for name in names[1:]), reached


def test_per_roi_maps_lie_in_the_pooled_box(explained):
    if explained.kind == "fcos":
        pytest.skip("one-stage: no per-ROI layer")
    model = explained.model
    with torch.no_grad():
        instances = reference_forward(model, explained.inputs)
    layer = explained.layers[0]
    for det in (d for dets in explained.out for d in dets):
        # The box that was pooled: for a cascade the last stage's (the previous stage's
        # regression), as the adapter records it.
        pooled = instances[det.image_index].cam_proposal_box[det.rank]
        assert torch.equal(torch.as_tensor(det.proposal_box), pooled)
        x0, y0, x1, y1 = pooled.tolist()
        for heat in det.maps_by_layer[layer].values():
            outside = heat.clone()
            outside[max(int(y0) - 1, 0) : int(y1) + 2, max(int(x0) - 1, 0) : int(x1) + 2] = 0
            assert float(outside.max()) == 0.0


def test_default_layers(explained):
    # FCOS: its last classification conv (``.7`` is a GroupNorm in FCOS's head); the ROI
    # heads: the per-ROI pooler.
    expected = "head.cls_subnet.11" if explained.kind == "fcos" else "roi_heads.box_pooler"
    assert Detectron2CAM(explained.model).layers == (expected,)


def test_cascade_refuses_an_earlier_stage_layer():
    # Every stage pools its own boxes; a detection's box is the last stage's, so an earlier
    # stage's per-ROI map would be pasted into a box that stage never pooled. A conv box head
    # (one 16-channel conv per stage) gives each stage a 4-D per-ROI layer.
    cfg = tiny_lazy_config("cascade")
    for box_head in cfg.model.roi_heads.box_heads:
        box_head.conv_dims = [16]
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    inputs = two_images()
    with pytest.raises(ValueError, match="earlier cascade stage.*box_head.2"):
        Detectron2CAM(model, "roi_heads.box_head.0.conv1").explain(inputs)
    dets, _ = Detectron2CAM(model, "roi_heads.box_head.2.conv1", ("gradcam",)).explain(
        inputs, max_detections=1
    )
    assert dets[0].layer_kinds["roi_heads.box_head.2.conv1"] == "roi"
