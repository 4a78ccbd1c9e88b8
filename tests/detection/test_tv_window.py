"""The windowed head path (one crop per detection at RetinaNet's class head) gives exactly
the maps of one dense backward per detection."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import detection as tvd

from lightning_gradcam.core.detect import local_radius
from lightning_gradcam.core.methods import compute_cam
from lightning_gradcam.detection import DetectionCAM
from lightning_gradcam.detection.dense_head import head_window

#: Upstream of the FPN (the window takes in the FPN's output convolutions too), and the
#: FPN's P3 output itself (the window starts at the head's input).
LAYERS = ("backbone.body.layer3", "backbone.fpn.layer_blocks.0")


def _retinanet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = tvd.retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=128,
        max_size=128,
        score_thresh=0.0,
    )
    return model.eval()


def _one_at_a_time(model, image, detections, name):
    """Per detection: its logit read from the class conv's own output, and one dense
    backward of it alone to the layer (zero where the logit does not read the layer)."""
    layer = dict(model.named_modules())[name]
    logits_conv = model.head.classification_head.cls_logits
    seen: dict[str, list] = {"layer": [], "logits": []}
    hooks = [
        layer.register_forward_hook(lambda m, i, o: seen["layer"].append(o)),
        logits_conv.register_forward_hook(lambda m, i, o: seen["logits"].append(o)),
    ]
    try:
        model([image])
    finally:
        for hook in hooks:
            hook.remove()
    (activation,) = seen["layer"]
    anchors = model.head.classification_head.num_anchors
    out = []
    for det in detections:
        conv = seen["logits"][det.level]
        classes = conv.shape[1] // anchors
        position, anchor = divmod(det.anchor_index, anchors)
        y, x = divmod(position, conv.shape[-1])
        logit = conv[0, anchor * classes + det.class_id, y, x]
        (grad,) = torch.autograd.grad(
            logit, activation, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        out.append((float(logit), activation[0].detach(), grad[0]))
    return out


@pytest.mark.parametrize("name", LAYERS)
def test_windowed_retinanet_maps_equal_one_backward_per_detection(name):
    model = _retinanet()
    assert head_window(model) is not None and head_window(model).radius == 5
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1))
    cam = DetectionCAM(model, layer=name, methods=("hirescam", "gradcam"))
    detections = cam.explain([image], max_detections=24)[0]
    assert len(detections) == 24
    assert len({det.level for det in detections}) > 1  # P3 and P4
    reference = _one_at_a_time(model, image, detections, name)
    for det, (logit, act, grad) in zip(detections, reference):
        assert abs(det.target_score - logit) <= 1e-5 * (1 + abs(logit))
        for method in ("hirescam", "gradcam"):
            expected = compute_cam(method, act[None], grad[None])[0]
            got = det.layer_maps_by_layer[name][method]
            scale = float(expected.abs().max()) or 1.0
            assert torch.allclose(got, expected, rtol=0, atol=1e-5 * scale), method


def test_heads_with_group_norm_are_not_windowed():
    torch.manual_seed(0)
    fcos = tvd.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    assert head_window(fcos.eval()) is None
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    assert local_radius([conv, torch.nn.ReLU(), conv]) == 2
    assert local_radius([torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)]) is None
    assert local_radius([torch.nn.GroupNorm(2, 4)]) is None
