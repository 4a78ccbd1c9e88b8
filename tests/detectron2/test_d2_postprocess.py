"""Detectron2CAM and CAMPredictor report the detections detectron2 reports: boxes, classes and
scores equal to ``model(inputs)`` / ``DefaultPredictor`` (rescaled to height/width, empty boxes
dropped), maps in the same pixels; the scalar differentiated is the class logit or the
reported probability, as asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from d2_helpers import make_inputs
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from detectron2_hooks import CAMPredictor, Detectron2CAM, to_cam_config
from detectron2_hooks.tiny import tiny_config

KINDS = ("c4", "fpn", "retinanet", "mask")


def _config(kind: str, cam: bool):
    cfg = tiny_config("fpn" if kind == "mask" else kind, cam=cam, score_thresh=0.001)
    if kind == "mask":
        cfg.MODEL.MASK_ON = True
        cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
        cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 160
    return cfg


@pytest.fixture(scope="module", params=KINDS)
def pair(request):
    """(kind, DefaultPredictor on the stock model, the CAM model with the same weights)."""
    kind = request.param
    torch.manual_seed(3)
    predictor = DefaultPredictor(_config(kind, cam=False))
    cam_model = build_model(to_cam_config(_config(kind, cam=False))).eval()
    cam_model.load_state_dict(predictor.model.state_dict())
    return kind, predictor, cam_model


def _image(seed: int = 0, size=(150, 230)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 120, (*size, 3)).astype(np.uint8)
    for y, x in rng.integers(0, 100, (3, 2)):
        image[y : y + 45, x : x + 50] += 120
    return image


def _assert_same(dets, instances, order_by_score=True):
    order = torch.argsort(instances.scores, descending=True, stable=True)
    assert len(dets) == len(instances) > 0
    boxes = torch.stack([d.box for d in dets])
    torch.testing.assert_close(boxes, instances.pred_boxes.tensor[order], rtol=0, atol=1e-4)
    assert [d.class_id for d in dets] == instances.pred_classes[order].tolist()
    torch.testing.assert_close(
        torch.tensor([d.score for d in dets]), instances.scores[order].float(), rtol=0, atol=1e-6
    )
    assert [d.rank for d in dets] == order.tolist()


@pytest.mark.parametrize("with_size", [False, True], ids=["no-height-width", "height-width"])
def test_explain_reports_what_the_model_reports(pair, with_size):
    kind, predictor, cam_model = pair
    inputs = make_inputs(2)
    if with_size:  # as a DatasetMapper gives them: the original image's size
        for item, (h, w) in zip(inputs, [(211, 263), (97, 80)]):
            item.update(height=h, width=w)
    with torch.no_grad():
        expected = cam_model([dict(item) for item in inputs])
    out = Detectron2CAM(cam_model, methods=("gradcam",)).explain(inputs, max_detections=None)
    for dets, item, exp in zip(out, inputs, expected):
        _assert_same(dets, exp["instances"])
        size = (
            item.get("height", item["image"].shape[1]),
            item.get("width", item["image"].shape[2]),
        )
        for det in dets:
            assert tuple(det.maps["gradcam"].shape) == size
            x0, y0, x1, y1 = det.box.tolist()
            assert 0 <= x0 < x1 <= size[1] and 0 <= y0 < y1 <= size[0]  # empty boxes dropped


def test_campredictor_equals_default_predictor(pair):
    kind, predictor, cam_model = pair
    image = _image()
    expected = predictor(image)["instances"]
    cam_predictor = CAMPredictor(
        predictor.cfg, methods=("gradcam",), max_detections=None, model=cam_model
    )
    dets = cam_predictor(image)
    _assert_same(dets, expected)
    for det in dets:
        assert tuple(det.maps["gradcam"].shape) == image.shape[:2]  # the image's own pixels
    if kind in ("c4", "fpn", "mask"):
        # A per-ROI map lies in its (rescaled) proposal box, in the image's pixels.
        det = next(d for d in dets if d.evidence["gradcam"])
        x0, y0, x1, y1 = det.proposal_box.tolist()
        heat = det.maps["gradcam"].clone()
        heat[max(int(y0) - 1, 0) : int(y1) + 2, max(int(x0) - 1, 0) : int(x1) + 2] = 0
        assert float(heat.max()) == 0.0


def test_campredictor_refuses_what_is_not_an_hwc_uint8_image(pair):
    _kind, predictor, cam_model = pair
    cam_predictor = CAMPredictor(predictor.cfg, model=cam_model)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        cam_predictor(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="uint8"):
        cam_predictor(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="CAMPredictor"):
        Detectron2CAM(cam_model).explain([{"image": _image()}])


def _recomputed_logits(model, inputs):
    """Every detection's class logit from the model's own box predictor / head, run anew."""
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        if hasattr(model, "head"):
            feats = [features[f] for f in model.head_in_features]
            logits, _ = model._transpose_dense_predictions(
                model.head(feats), [model.num_classes, 4]
            )
            return lambda det: float(
                logits[det.level][det.image_index][det.anchor_index, det.class_id]
            )
        proposals, _ = model.proposal_generator(images, features, None)
        heads = model.roi_heads
        if hasattr(heads, "res5"):
            pooled = heads._shared_roi_transform(
                [features[f] for f in heads.in_features], [p.proposal_boxes for p in proposals]
            )
            class_logits = heads.box_predictor(pooled.mean(dim=[2, 3]))[0]
        else:
            pooled = heads.box_pooler(
                [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
            )
            class_logits = heads.box_predictor(heads.box_head(pooled))[0]
        return lambda det: float(class_logits[det.roi_row, det.class_id])


def test_target_score_is_the_logit_or_the_reported_probability(pair):
    _kind, _predictor, cam_model = pair
    inputs = make_inputs(2)
    logit = _recomputed_logits(cam_model, inputs)
    by_logit = Detectron2CAM(cam_model, methods=("gradcam",)).explain(inputs, max_detections=4)
    by_prob = Detectron2CAM(cam_model, methods=("gradcam",), score="probability").explain(
        inputs, max_detections=4
    )
    for dets_l, dets_p in zip(by_logit, by_prob):
        assert [d.box.tolist() for d in dets_l] == [d.box.tolist() for d in dets_p]
        for det_l, det_p in zip(dets_l, dets_p):
            assert det_l.target_score == pytest.approx(logit(det_l), abs=1e-6)
            assert det_l.score == det_p.score
            assert det_p.target_score == pytest.approx(det_p.score, abs=1e-6)
            assert det_l.target_score != pytest.approx(det_l.score, abs=1e-3)


def test_unknown_score_is_refused(pair):
    _kind, _predictor, cam_model = pair
    with pytest.raises(ValueError, match="'logit'.*'probability'"):
        Detectron2CAM(cam_model, score="softmax")


def test_campredictor_builds_from_cfg_and_loads_weights_as_default_predictor(tmp_path):
    """From the config alone: a stock cfg switched to the CAM adapters, MODEL.WEIGHTS loaded by
    the safe loader; the same detections as DefaultPredictor with the same file."""
    torch.manual_seed(5)
    source = build_model(_config("c4", cam=False))
    path = tmp_path / "model.pth"
    torch.save({"model": source.state_dict()}, path)
    cfg = _config("c4", cam=False)
    cfg.MODEL.WEIGHTS = str(path)
    image = _image(seed=2)
    expected = DefaultPredictor(cfg)(image)["instances"]
    dets = CAMPredictor(cfg, methods=("gradcam",), max_detections=None)(image)
    _assert_same(dets, expected)


def test_gradcam_score_config_key():
    from detectron2_hooks import GradCAMHook, add_gradcam_config

    cfg = add_gradcam_config(tiny_config("c4"))
    assert cfg.GRADCAM.SCORE == "logit"
    inputs = make_inputs(1)
    assert GradCAMHook.from_config(cfg, inputs=inputs).score == "logit"
    cfg.GRADCAM.SCORE = "probability"
    assert GradCAMHook.from_config(cfg, inputs=inputs).score == "probability"
    cfg.GRADCAM.SCORE = "softmax"
    with pytest.raises(ValueError, match="cfg.GRADCAM.SCORE: score must be 'logit'"):
        GradCAMHook.from_config(cfg, inputs=inputs)
