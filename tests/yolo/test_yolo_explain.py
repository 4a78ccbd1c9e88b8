"""DetectionCAM on real Ultralytics YOLO models (random init, no download)."""

import os

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
ultralytics = pytest.importorskip("ultralytics")
from ultralytics.utils.nms import non_max_suppression  # noqa: E402

from lightning_gradcam import DetectionCAM  # noqa: E402


@pytest.fixture(scope="module", params=["yolov8n.yaml", "yolo11n.yaml"])
def yolo(request):
    torch.manual_seed(0)
    return ultralytics.YOLO(request.param)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_detections_are_ultralytics_nms_and_target_is_the_logit(yolo):
    torch.manual_seed(1)
    image = torch.rand(3, 96, 128)
    cam = DetectionCAM(yolo, conf=0.0, iou=0.7)
    dets = cam.explain([image], max_detections=16)[0]
    network = yolo.model.eval()
    batch = torch.nn.functional.pad(image, (0, 0, 0, 0), value=114 / 255)[None]
    branches = network.model[-1].cv3
    per_level = {}
    handles = [
        branch.register_forward_hook(lambda m, i, o, k=k: per_level.__setitem__(k, o))
        for k, branch in enumerate(branches)
    ]
    with torch.no_grad():
        decoded, _ = network(batch)
    for handle in handles:
        handle.remove()
    network.train()
    (expected,) = non_max_suppression(decoded, 0.0, 0.7, max_det=300, nc=network.model[-1].nc)
    assert len(dets) == 16
    for rank, det in enumerate(dets):
        assert det.rank == rank
        torch.testing.assert_close(det.box, expected[rank, :4])
        assert det.class_id == int(expected[rank, 5])
        assert det.score == pytest.approx(float(expected[rank, 4]), rel=1e-6)
        assert torch.sigmoid(torch.tensor(det.target_score)).item() == pytest.approx(
            det.score, rel=1e-5
        )
        # level and anchor_index name the cell of that level's own class-logit map
        logits = per_level[det.level][0, det.class_id].reshape(-1)
        assert det.anchor_index < len(logits)
        assert float(logits[det.anchor_index]) == pytest.approx(det.target_score, rel=1e-5)
        for method in ("gradcam", "gradcam++"):
            assert det.maps[method].shape == (96, 128)
            assert float(det.maps[method].min()) >= 0 and float(det.maps[method].max()) <= 1


def test_model_left_as_it_was(yolo):
    network = yolo.model
    network.train()
    before = _state(network)
    head = network.model[-1]
    shape = getattr(head, "shape", None)
    image = torch.rand(3, 64, 64)
    rng = torch.get_rng_state()
    DetectionCAM(yolo, conf=0.0).explain([image], max_detections=4)
    assert network.training and all(m.training for m in network.modules())
    after = _state(network)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in network.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in network.modules())
    assert getattr(head, "shape", None) == shape


def test_images_of_different_sizes_and_a_named_layer(yolo):
    images = [torch.rand(3, 96, 128), torch.rand(3, 64, 70)]
    dets = DetectionCAM(yolo, layer="model.9", conf=0.0).explain(images, max_detections=3)
    assert [len(d) for d in dets] == [3, 3]
    assert dets[1][0].maps["gradcam"].shape == (64, 70)
    assert dets[1][0].layer_kinds["model.9"] == "image"
    # each image's own detections: different images, different maps
    assert not torch.equal(dets[0][0].layer_maps["gradcam"], dets[1][0].layer_maps["gradcam"])


def test_other_tasks_and_bad_input():
    with pytest.raises(TypeError, match="classification"):
        DetectionCAM(ultralytics.YOLO("yolov8n-cls.yaml"))
    with pytest.raises(TypeError, match="pose"):
        DetectionCAM(ultralytics.YOLO("yolov8n-pose.yaml"))
    yolo = ultralytics.YOLO("yolov8n.yaml")
    with pytest.raises(ValueError, match="conf"):
        DetectionCAM(yolo, conf=2.0)
    cam = DetectionCAM(yolo)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        cam.explain([torch.rand(1, 64, 64)])
    with pytest.raises(ValueError, match="floats"):
        cam.explain([torch.zeros(3, 64, 64, dtype=torch.uint8)])
    with pytest.raises(Exception, match="model.99"):
        DetectionCAM(yolo, layer="model.99")


def test_detections_sharing_a_backward_get_the_maps_of_one_at_a_time(yolo):
    """Detections whose head-input windows are disjoint share one backward (yolo/windows.py);
    their maps equal those of one backward per detection."""
    from lightning_gradcam.core.detect import receptive_radius
    from lightning_gradcam.core.state import preserve_model_state

    branches = yolo.model.model[-1].cv3
    with preserve_model_state(yolo.model):  # eval mode, as the CAM pass runs the model
        assert [receptive_radius(branch) for branch in branches] == [2, 2, 2]
    # In training mode BatchNorm normalises over the whole map: no window, no shared backward.
    branches.train()
    assert [receptive_radius(branch) for branch in branches] == [None, None, None]
    torch.manual_seed(2)
    images = [torch.rand(3, 160, 192), torch.rand(3, 128, 128)]
    methods = ("gradcam", "gradcam++", "hirescam")
    shared = DetectionCAM(yolo, conf=0.0, methods=methods)
    alone = DetectionCAM(yolo, conf=0.0, methods=methods)
    alone.windowed = False
    fast = shared.explain(images, max_detections=16)
    slow = alone.explain(images, max_detections=16)
    assert len({d.level for dets in fast for d in dets}) >= 2
    for fast_dets, slow_dets in zip(fast, slow):
        assert len(fast_dets) == len(slow_dets) == 16
        for a, b in zip(fast_dets, slow_dets):
            assert (a.rank, a.anchor_index, a.evidence) == (b.rank, b.anchor_index, b.evidence)
            for method in methods:
                # random-init layer maps are ~1e-11: compared relative to their peak
                peak = b.layer_maps[method].abs().max().clamp_min(1e-30)
                torch.testing.assert_close(
                    a.layer_maps[method] / peak, b.layer_maps[method] / peak, atol=1e-5, rtol=0
                )
                torch.testing.assert_close(a.maps[method], b.maps[method], atol=1e-5, rtol=0)
