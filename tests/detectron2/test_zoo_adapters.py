"""Every CAM adapter on tiny versions of detectron2's SHIPPED model-zoo configs (YAML and
LazyConfig): same predictions and checkpoint keys as the stock model, provenance fields that
recompute from the model's own head, registration that survives a second import, and
``to_cam_config`` on LazyConfigs."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY, ROI_HEADS_REGISTRY, build_model
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, Instances
from omegaconf import OmegaConf

from detectron2_hooks import Detectron2CAM, to_cam_config
from detectron2_hooks.adapters import (
    CAMFCOS,
    CAMCascadeROIHeads,
    CAMRetinaNet,
    CAMStandardROIHeads,
)
from detectron2_hooks.tiny import tiny_lazy_config, tiny_zoo_config

ROOT = Path(__file__).resolve().parents[2]

#: (config style, kind): every adapter, from YAML and from LazyConfig where detectron2 ships one.
MODELS = [
    ("yaml", "c4"),
    ("yaml", "fpn"),
    ("yaml", "retinanet"),
    ("yaml", "cascade"),
    ("yaml", "panoptic"),
    ("lazy", "retinanet"),
    ("lazy", "fcos"),
    ("lazy", "cascade"),
    ("lazy", "panoptic"),
    ("lazy", "vitdet"),
    ("lazy", "mask_rcnn_lsj"),
]
IDS = [f"{style}-{kind}" for style, kind in MODELS]


def _build(style: str, kind: str, cam: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if style == "yaml":
        return build_model(tiny_zoo_config(kind, cam=cam)).eval()
    return instantiate(tiny_lazy_config(kind, cam=cam).model).eval()


def _inputs() -> list[dict]:
    # Two images of different sizes (<= 160 px for ViTDet's square_pad), fixed pixels.
    gen = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randint(0, 256, (3, 96, 128), generator=gen).float()},
        {"image": torch.randint(0, 256, (3, 128, 112), generator=gen).float()},
    ]


class Zoo:
    """One model-zoo detector: CAM model, stock model with the CAM model's weights, and both
    models' outputs on the same two images (CAM with grad enabled)."""

    def __init__(self, style: str, kind: str):
        self.style, self.kind = style, kind
        self.cam = _build(style, kind, cam=True, seed=0)
        self.stock = _build(style, kind, cam=False, seed=1)
        self.load_result = self.cam.load_state_dict(self.stock.state_dict(), strict=False)
        self.stock.load_state_dict(self.cam.state_dict())
        self.inputs = _inputs()
        with torch.no_grad():
            self.stock_out = self.stock(self.inputs)
        self.cam_out = self.cam(self.inputs)

    def instances(self, model_out) -> list[Instances]:
        return [o["instances"] for o in model_out]


@pytest.fixture(scope="module", params=MODELS, ids=IDS)
def zoo(request) -> Zoo:
    return Zoo(*request.param)


def test_adapter_is_the_expected_class(zoo):
    expected = {
        "c4": "CAMRes5ROIHeads",
        "fpn": "CAMStandardROIHeads",
        "panoptic": "CAMStandardROIHeads",
        "vitdet": "CAMStandardROIHeads",
        "mask_rcnn_lsj": "CAMStandardROIHeads",
        "cascade": "CAMCascadeROIHeads",
        "retinanet": "CAMRetinaNet",
        "fcos": "CAMFCOS",
    }[zoo.kind]
    heads = getattr(zoo.cam, "roi_heads", None)
    assert expected in (type(zoo.cam).__name__, type(heads).__name__)
    # The stock model is really stock: no adapter in it.
    assert not getattr(zoo.stock, "cam_provenance", False)
    assert not getattr(getattr(zoo.stock, "roi_heads", None), "cam_provenance", False)


def test_stock_checkpoint_keys_load(zoo):
    assert zoo.load_result.missing_keys == []
    assert zoo.load_result.unexpected_keys == []
    assert list(zoo.cam.state_dict()) == list(zoo.stock.state_dict())


def test_predictions_equal_stock(zoo):
    cam, stock = zoo.instances(zoo.cam_out), zoo.instances(zoo.stock_out)
    assert sum(len(x) for x in cam) > 0, "the tiny model should detect something"
    for c, s in zip(cam, stock):
        assert torch.equal(c.pred_boxes.tensor.detach(), s.pred_boxes.tensor)
        assert torch.equal(c.scores.detach(), s.scores)
        assert torch.equal(c.pred_classes, s.pred_classes)
    if zoo.kind == "panoptic":
        for c, s in zip(zoo.cam_out, zoo.stock_out):
            assert torch.equal(c["sem_seg"].detach(), s["sem_seg"])
            assert torch.equal(c["panoptic_seg"][0], s["panoptic_seg"][0])


def test_scores_and_logits_on_the_graph_for_every_image(zoo):
    # The earliest trainable parameter: each image's logits reach back through the backbone.
    first = next(p for p in zoo.cam.parameters() if p.requires_grad)
    for inst in zoo.instances(zoo.cam_out):
        assert inst.scores.requires_grad and inst.cam_logit.requires_grad
        # Each image back-propagates alone (no in-place op on views shared by the batch).
        (grad,) = torch.autograd.grad(inst.cam_logit.sum(), first, retain_graph=True)
        assert grad.abs().sum() > 0
        torch.autograd.grad(inst.scores.sum(), first, retain_graph=True)


def _features(model, inputs):
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        return images, model.backbone(images.tensor)


def _dense_check(zoo, inst: Instances, image: int, outputs) -> None:
    model = zoo.cam
    logits = outputs[0]
    num_classes = model.num_classes
    for d in range(len(inst)):
        level = int(inst.cam_level[d])
        index = int(inst.cam_anchor_index[d])
        k = int(inst.cam_class_index[d])
        assert k == int(inst.pred_classes[d])
        per_level = logits[level]
        num_anchors = per_level.shape[1] // num_classes
        width = per_level.shape[3]
        a, hw = index % num_anchors, index // num_anchors
        h, w = hw // width, hw % width
        z = per_level[image, a * num_classes + k, h, w]
        assert float(inst.cam_logit[d].detach()) == pytest.approx(float(z), abs=1e-6)
        if zoo.kind == "fcos":
            c = outputs[2][level][image, 0, h, w]
            assert float(inst.cam_centerness_logit[d].detach()) == pytest.approx(float(c), abs=1e-6)
            score = torch.sqrt(torch.sigmoid(z) * torch.sigmoid(c))
        else:
            score = torch.sigmoid(z)
        assert float(inst.scores[d].detach()) == pytest.approx(float(score), abs=1e-6)


def _roi_logits(heads, features, boxes: torch.Tensor, stage: int | None = None):
    """(class logits, box deltas) of the box head at ``boxes`` alone, pooled afresh."""
    if hasattr(heads, "res5"):  # C4
        pooled = heads._shared_roi_transform(
            [features[f] for f in heads.in_features], [Boxes(boxes)]
        )
        return heads.box_predictor(pooled.mean(dim=[2, 3]))
    pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(boxes)])
    if stage is None:
        return heads.box_predictor(heads.box_head(pooled))
    return heads.box_predictor[stage](heads.box_head[stage](pooled))


def _roi_check(zoo, inst: Instances, proposals: Instances, offset: int, features) -> None:
    heads = zoo.cam.roi_heads
    rows = inst.cam_proposal_index
    assert torch.equal(inst.cam_roi_row, rows + offset)
    k = inst.pred_classes
    n = torch.arange(len(inst))
    with torch.no_grad():
        if isinstance(heads, CAMCascadeROIHeads):
            stages = heads.num_cascade_stages
            assert torch.equal(inst.cam_pooler_call, torch.full_like(rows, stages - 1))
            # The cascade, replayed one detection at a time from its RPN proposal.
            boxes = proposals.proposal_boxes.tensor[rows]
            probs = []
            for s in range(stages):
                if s == stages - 1:
                    torch.testing.assert_close(boxes, inst.cam_proposal_box, atol=1e-4, rtol=0)
                logits, deltas = _roi_logits(heads, features, boxes, stage=s)
                z = logits[n, k]
                torch.testing.assert_close(
                    inst.cam_stage_logits[:, s].detach(), z, atol=1e-6, rtol=0
                )
                probs.append(logits.softmax(dim=1)[n, k])
                props = Instances(proposals.image_size, proposal_boxes=Boxes(boxes))
                boxes = heads.box_predictor[s].predict_boxes((logits, deltas), [props])[0]
                boxes = Boxes(boxes)
                boxes.clip(proposals.image_size)
                boxes = boxes.tensor
            torch.testing.assert_close(inst.cam_logit.detach(), z, atol=1e-6, rtol=0)
            torch.testing.assert_close(inst.scores.detach(), sum(probs) / stages, atol=1e-6, rtol=0)
        else:
            pooled_box = proposals.proposal_boxes.tensor[rows]
            assert torch.equal(inst.cam_proposal_box, pooled_box)
            logits, _ = _roi_logits(heads, features, pooled_box)
            torch.testing.assert_close(inst.cam_logit.detach(), logits[n, k], atol=1e-6, rtol=0)
            probs = logits.softmax(dim=1)[n, k]
            torch.testing.assert_close(inst.scores.detach(), probs, atol=1e-6, rtol=0)


def test_provenance_recomputes_from_the_head(zoo):
    model = zoo.cam
    images, features = _features(model, zoo.inputs)
    raw = zoo.instances(zoo.cam_out)
    # Every image detects something, so every check below runs on real detections.
    assert all(len(inst) > 0 for inst in raw), [len(inst) for inst in raw]
    if zoo.kind in ("retinanet", "fcos"):
        with torch.no_grad():
            outputs = model.head([features[f] for f in model.head_in_features])
        for image, inst in enumerate(raw):
            _dense_check(zoo, inst, image, outputs)
        return
    with torch.no_grad():
        proposals, _ = model.proposal_generator(images, features, None)
    offset = 0
    for image, (inst, props) in enumerate(zip(raw, proposals)):
        # The outputs went through detector_postprocess; with no height/width in the inputs
        # the boxes keep their scale, and the provenance fields are plain tensors anyway.
        one = {name: f[image : image + 1] for name, f in features.items()}
        _roi_check(zoo, inst, props, offset, one)
        offset += len(props)


@pytest.mark.parametrize("kind", ["vitdet", "mask_rcnn_lsj"])
def test_lazy_only_detectors_explained_at_the_per_roi_layer(kind):
    # ViTDet and the new LSJ baselines are CAMStandardROIHeads models: Detectron2CAM explains
    # them per ROI today (their image-level ViT layers wait for the channels-last layouts).
    model = _build("lazy", kind, cam=True, seed=0)
    cam = Detectron2CAM(model, "roi_heads.box_pooler", methods=("gradcam",), score="probability")
    (dets,) = cam.explain(_inputs()[:1], max_detections=2)
    assert len(dets) == 2
    for det in dets:
        assert det.target_score == pytest.approx(det.score, abs=1e-6)
        assert det.layer_kinds["roi_heads.box_pooler"] == "roi"
        heat = torch.as_tensor(det.maps["gradcam"])
        assert heat.shape == (96, 128) and 0 <= float(heat.min()) <= float(heat.max()) <= 1
        # A per-ROI map lies in the box that was pooled (pasted there), nowhere else.
        x0, y0, x1, y1 = torch.as_tensor(det.proposal_box).tolist()
        outside = heat.clone()
        outside[max(int(y0) - 1, 0) : int(y1) + 2, max(int(x0) - 1, 0) : int(x1) + 2] = 0
        assert float(outside.max()) == 0.0


def test_registered_and_registration_survives_a_second_import():
    assert ROI_HEADS_REGISTRY.get("CAMCascadeROIHeads") is CAMCascadeROIHeads
    assert META_ARCH_REGISTRY.get("CAMFCOS") is CAMFCOS
    code = textwrap.dedent(
        """
        import importlib, importlib.util
        import detectron2_hooks, detectron2_hooks.adapters as first
        from detectron2.modeling import ROI_HEADS_REGISTRY, META_ARCH_REGISTRY
        importlib.reload(detectron2_hooks.adapters)
        importlib.reload(detectron2_hooks)
        spec = importlib.util.spec_from_file_location("second_copy", first.__file__)
        second = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(second)
        for name in ("CAMRes5ROIHeads", "CAMStandardROIHeads", "CAMCascadeROIHeads"):
            assert ROI_HEADS_REGISTRY.get(name) is getattr(second, name), name
        for name in ("CAMRetinaNet", "CAMFCOS"):
            assert META_ARCH_REGISTRY.get(name) is getattr(second, name), name
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


# ------------------------------------------------------------------ to_cam_config, LazyConfig


def _dump(cfg) -> str:
    """Every field of a LazyConfig, interpolations unresolved (repr: a deep copy's
    ``functools.partial`` is a new object that compares unequal but prints the same)."""
    return repr(OmegaConf.to_container(cfg, resolve=False))


@pytest.mark.parametrize(
    "name, where, adapter",
    [
        ("common/models/retinanet.py", "model", CAMRetinaNet),
        ("common/models/fcos.py", "model", CAMFCOS),
        ("common/models/cascade_rcnn.py", "model.roi_heads", CAMCascadeROIHeads),
        ("common/models/panoptic_fpn.py", "model.roi_heads", CAMStandardROIHeads),
        ("common/models/mask_rcnn_vitdet.py", "model.roi_heads", CAMStandardROIHeads),
        ("common/models/mask_rcnn_c4.py", "model.roi_heads", "CAMRes5ROIHeads"),
        ("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", "model.roi_heads", CAMStandardROIHeads),
    ],
)
def test_to_cam_config_swaps_lazy_targets_and_keeps_everything_else(name, where, adapter):
    from detectron2 import model_zoo

    stock = model_zoo.get_config(name)
    before = _dump(stock)
    cam = to_cam_config(stock)
    assert _dump(stock) == before  # the argument is unchanged

    def node(cfg):
        for part in where.split("."):
            cfg = cfg[part]
        return cfg

    target = node(cam)._target_
    assert getattr(target, "__name__", target) == getattr(adapter, "__name__", adapter)
    # Every other field is kept: only the one _target_ differs.
    node(cam)._target_ = node(stock)._target_
    assert _dump(cam) == before
    # The model node alone works too, and a CAM config is left as it is (idempotent).
    model_only = to_cam_config(stock.model)
    swapped = model_only if where == "model" else model_only.roi_heads
    assert swapped._target_ is target
    assert _dump(to_cam_config(to_cam_config(stock))) == _dump(to_cam_config(stock))


def test_to_cam_config_keeps_string_targets_as_strings():
    cfg = tiny_lazy_config("retinanet", cam=False)
    cfg.model._target_ = "detectron2.modeling.meta_arch.retinanet.RetinaNet"
    cam = to_cam_config(cfg)
    assert cam.model._target_ == "detectron2_hooks.adapters.CAMRetinaNet"
    assert type(instantiate(cam.model)).__name__ == "CAMRetinaNet"
    cascade = tiny_lazy_config("cascade", cam=False)
    cascade.model.roi_heads._target_ = "detectron2.modeling.roi_heads.CascadeROIHeads"
    cam = to_cam_config(cascade)
    assert cam.model.roi_heads._target_ == "detectron2_hooks.adapters.CAMCascadeROIHeads"


def test_to_cam_config_refuses_lazy_detectors_without_adapter(tmp_path):
    class MyHeads(StandardROIHeads):  # a subclass may change the inference we re-implement
        pass

    cfg = tiny_lazy_config("panoptic", cam=False)
    cfg.model.roi_heads._target_ = MyHeads
    before = copy.deepcopy(cfg)
    with pytest.raises(ValueError, match="no CAM adapter.*MyHeads.*supported"):
        to_cam_config(cfg)
    assert cfg.model.roi_heads._target_ is before.model.roi_heads._target_
    with pytest.raises(ValueError, match="no .model. node with a _target_"):
        (tmp_path / "train_only.py").write_text("train = dict(max_iter=10)\n")
        to_cam_config(LazyConfig.load(str(tmp_path / "train_only.py")))
    with pytest.raises(TypeError, match="CfgNode.*LazyConfig"):
        to_cam_config({"MODEL": {}})
