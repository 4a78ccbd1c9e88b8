"""CAM adapters: registration, checkpoints, stock-equal predictions, correct provenance."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from d2_helpers import KINDS, build, make_inputs, record_outputs
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.structures import Boxes

from detectron2_hooks import add_gradcam_config, to_cam_config
from detectron2_hooks.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_registered_under_their_names():
    assert ROI_HEADS_REGISTRY.get("CAMRes5ROIHeads").__name__ == "CAMRes5ROIHeads"
    assert ROI_HEADS_REGISTRY.get("CAMStandardROIHeads").__name__ == "CAMStandardROIHeads"
    assert META_ARCH_REGISTRY.get("CAMRetinaNet").__name__ == "CAMRetinaNet"


def test_importable_twice_without_registry_error():
    # In a child process, so that reloading does not swap the classes under the other tests.
    code = textwrap.dedent(
        """
        import importlib, importlib.util, sys
        import detectron2_hooks, detectron2_hooks.adapters as first
        from detectron2.modeling import ROI_HEADS_REGISTRY, META_ARCH_REGISTRY
        importlib.reload(detectron2_hooks.adapters)
        importlib.reload(detectron2_hooks)
        spec = importlib.util.spec_from_file_location("second_copy", first.__file__)
        second = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(second)  # the same file under another module name
        assert ROI_HEADS_REGISTRY.get("CAMRes5ROIHeads") is second.CAMRes5ROIHeads
        assert META_ARCH_REGISTRY.get("CAMRetinaNet") is second.CAMRetinaNet
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_unrelated_class_with_the_same_name_is_refused():
    from detectron2_hooks.adapters import _register

    class CAMRes5ROIHeads:  # a user's own class that happens to share the name
        pass

    with pytest.raises(RuntimeError, match="unrelated"):
        _register(ROI_HEADS_REGISTRY, CAMRes5ROIHeads)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_keys_equal_and_load_both_ways(kind, models, stock_models):
    cam_sd, stock_sd = models[kind].state_dict(), stock_models[kind].state_dict()
    assert list(cam_sd) == list(stock_sd)
    fresh = build(kind, seed=5)
    assert fresh.load_state_dict(stock_sd, strict=True).missing_keys == []
    assert all(torch.equal(fresh.state_dict()[k], stock_sd[k]) for k in stock_sd)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch,grad", [(1, False), (2, False), (2, True)])
def test_predictions_equal_stock(kind, batch, grad, models, stock_models):
    inputs = make_inputs(batch)
    with torch.set_grad_enabled(grad):
        cam_out = models[kind](inputs)
        stock_out = stock_models[kind](inputs) if not grad else None
    if stock_out is None:
        with torch.no_grad():
            stock_out = stock_models[kind](inputs)
    total = 0
    for ours, theirs in zip(cam_out, stock_out):
        ours, theirs = ours["instances"], theirs["instances"]
        total += len(ours)
        assert torch.equal(ours.pred_boxes.tensor.detach(), theirs.pred_boxes.tensor)
        assert torch.equal(ours.scores.detach(), theirs.scores)
        assert torch.equal(ours.pred_classes, theirs.pred_classes)
        assert ours.scores.requires_grad == grad
    assert total > 0, "the tiny model should detect something"


def _rcnn_parts(model, inputs):
    """Inference without postprocessing, plus every ROI's class logits and the proposals."""
    with (
        torch.no_grad(),
        record_outputs(model.roi_heads.box_predictor.cls_score) as logits,
        record_outputs(model.proposal_generator) as proposals,
    ):
        instances = model.inference(inputs, do_postprocess=False)
    return instances, logits[0], proposals[0][0]


@pytest.mark.parametrize("kind", ["c4", "fpn"])
@pytest.mark.parametrize("batch", [1, 2])
def test_roi_provenance_points_at_the_pooled_proposal(kind, batch, models):
    model = models[kind]
    instances, logits, proposals = _rcnn_parts(model, make_inputs(batch))
    probs = logits.softmax(dim=-1)
    offset = 0
    for inst, props in zip(instances, proposals):
        assert len(inst) > 0
        rows = inst.cam_roi_row
        assert torch.equal(rows, inst.cam_proposal_index + offset)
        assert torch.equal(
            inst.cam_proposal_box, props.proposal_boxes.tensor[inst.cam_proposal_index]
        )
        assert not isinstance(inst.cam_proposal_box, Boxes)
        torch.testing.assert_close(probs[rows, inst.pred_classes], inst.scores, rtol=0, atol=1e-6)
        offset += len(props)


@pytest.mark.parametrize("kind", ["c4", "fpn"])
def test_roi_provenance_survives_the_non_finite_filter(kind, models):
    """Rows with a non-finite box are dropped before NMS: kept rows must be mapped back."""
    model = models[kind]
    bad = torch.tensor([0, 1, 2, 5])

    def poison(_module, _inputs, deltas):
        deltas = deltas.clone()
        deltas[bad] = float("inf")
        return deltas

    handle = model.roi_heads.box_predictor.bbox_pred.register_forward_hook(poison)
    try:
        instances, logits, _ = _rcnn_parts(model, make_inputs(1))
    finally:
        handle.remove()
    inst = instances[0]
    assert len(inst) > 0
    assert not torch.isin(inst.cam_proposal_index, bad).any()
    probs = logits.softmax(dim=-1)
    torch.testing.assert_close(
        probs[inst.cam_roi_row, inst.pred_classes], inst.scores, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("batch", [1, 2])
def test_retinanet_provenance_points_at_level_anchor_and_class(batch, zeroed_models):
    model = zeroed_models["retinanet"]
    inputs = make_inputs(batch)
    with torch.no_grad(), record_outputs(model.head.cls_score) as logits:
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        instances = model.forward_inference(images, features, model.head(features))
        anchors = model.anchor_generator(features)
    num_anchors, num_classes = model.anchor_generator.num_cell_anchors[0], model.num_classes
    for image_index, inst in enumerate(instances):
        assert len(inst) > 0
        for level, anchor, klass, score, box in zip(
            inst.cam_level,
            inst.cam_anchor_index,
            inst.cam_class_index,
            inst.scores,
            inst.pred_boxes.tensor,
        ):
            width = logits[level].shape[-1]
            cell, a = divmod(int(anchor), num_anchors)
            h, w = divmod(cell, width)
            logit = logits[level][image_index, a * num_classes + int(klass), h, w]
            assert abs(float(logit.sigmoid()) - float(score)) < 1e-6
            # with zero regression the box is its anchor
            torch.testing.assert_close(box, anchors[level].tensor[anchor], rtol=0, atol=1e-3)
        assert torch.equal(inst.cam_class_index, inst.pred_classes)


def test_retinanet_scores_differentiable_for_every_image(models, stock_models):
    inputs = make_inputs(2)
    outputs = models["retinanet"](inputs)
    for out in outputs:
        (grad,) = torch.autograd.grad(
            out["instances"].scores[0], models["retinanet"].head.cls_score.weight, retain_graph=True
        )
        assert grad.abs().sum() > 0
    # the reason for the subclass: the stock in-place sigmoid breaks the first image's graph
    stock = stock_models["retinanet"](inputs)
    with pytest.raises(RuntimeError, match="inplace|modified"):
        torch.autograd.grad(
            stock[0]["instances"].scores[0], stock_models["retinanet"].head.cls_score.weight
        )


def test_to_cam_config_switches_names_and_keeps_the_original():
    for kind, key, cam_name in [
        ("c4", "ROI_HEADS.NAME", "CAMRes5ROIHeads"),
        ("fpn", "ROI_HEADS.NAME", "CAMStandardROIHeads"),
        ("retinanet", "META_ARCHITECTURE", "CAMRetinaNet"),
    ]:
        stock = tiny_config(kind, cam=False)
        stock.freeze()
        before = stock.dump()
        cam = to_cam_config(stock)
        node = cam.MODEL
        for part in key.split("."):
            node = getattr(node, part)
        assert node == cam_name
        assert stock.dump() == before  # the user's config is not modified
        assert to_cam_config(cam).dump() == cam.dump()  # idempotent
        assert cam.GRADCAM.METHODS == ["gradcam", "gradcam++"]


def test_to_cam_config_refuses_detectors_without_adapter():
    cfg = get_cfg()
    # CascadeROIHeads has an adapter since issue 12 (tests/detectron2/test_zoo_adapters.py).
    cfg.MODEL.ROI_HEADS.NAME = "RROIHeads"
    with pytest.raises(ValueError, match="RROIHeads"):
        to_cam_config(cfg)
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "FCOS"
    with pytest.raises(ValueError, match="FCOS"):
        to_cam_config(cfg)


def test_add_gradcam_config_keeps_values_and_works_on_frozen_cfg():
    cfg = get_cfg()
    add_gradcam_config(cfg)
    cfg.GRADCAM.LAYER = "backbone.res4"
    cfg.freeze()
    add_gradcam_config(cfg)
    assert cfg.GRADCAM.LAYER == "backbone.res4"
    assert cfg.is_frozen()
    fresh = get_cfg()
    fresh.freeze()
    add_gradcam_config(fresh)
    assert fresh.GRADCAM.MAX_DETECTIONS == 5 and fresh.is_frozen()
