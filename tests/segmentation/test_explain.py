"""SegmentationCAM: Seg-Grad-CAM targets and maps on torchvision, Hugging Face and plain
segmenters (random init, small inputs), golden values on a hand-set segmenter."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import segmentation as tv_segmentation

from lightning_gradcam.core.methods import normalize_maps
from lightning_gradcam.segmentation import SegmentationCAM, segmentation_logits

from .seg_nets import ChannelSegmenter, TinySegmenter, channel_images


def _expected_scores(logits: torch.Tensor, b: int, c: int) -> tuple[float, int]:
    """Seg-Grad-CAM's y^c recomputed by hand: the class's logits summed over its pixels."""
    predicted = logits[b].argmax(dim=0)
    region = predicted == c
    return float(logits[b, c][region].sum()), int(region.sum())


def _check_regions(model, regions, images, logits, background):
    for b, row in enumerate(regions):
        predicted = set(logits[b].argmax(dim=0).unique().tolist()) - {background}
        assert [r.class_id for r in row] == sorted(predicted)
        for region in row:
            score, pixels = _expected_scores(logits, b, region.class_id)
            assert region.pixels == pixels
            assert region.target_score == pytest.approx(score, rel=1e-5, abs=1e-5)
            for cam in region.maps.values():
                assert cam.shape == images.shape[-2:]
                assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0


@pytest.mark.parametrize(
    ("build", "layer"),
    [
        (tv_segmentation.fcn_resnet50, "backbone.layer4"),
        (tv_segmentation.deeplabv3_mobilenet_v3_large, "backbone.16"),
        (tv_segmentation.lraspp_mobilenet_v3_large, "backbone.16"),
    ],
)
def test_torchvision_segmenters(build, layer):
    torch.manual_seed(0)
    model = build(weights=None, weights_backbone=None, num_classes=3)
    model.train()
    images = torch.rand(2, 3, 48, 48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam = SegmentationCAM(model, methods=("gradcam", "gradcam++"))
    regions = cam.explain(images, background=None)
    assert cam.layer == layer
    # No trace: train mode, no .grad, BatchNorm statistics as they were.
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        logits = model(images)["out"]
    _check_regions(model, regions, images, logits, background=None)
    assert sum(r.pixels for r in regions[0]) == 48 * 48


def _tiny_segformer():
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 1],
        patch_sizes=[7, 3],
        strides=[4, 2],
        decoder_hidden_size=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    return transformers.SegformerForSemanticSegmentation(config).eval()


def test_hugging_face_segformer_logits_at_quarter_resolution():
    model = _tiny_segformer()
    images = torch.rand(2, 3, 64, 64)
    cam = SegmentationCAM(model, methods=("gradcam", "hirescam"))
    regions = cam.explain(images, background=None)
    assert cam.layer == "segformer.stages.1"  # the encoder's last stage
    assert cam.layout.source == "model: hidden_states" and cam.layout.grid == (8, 8)
    with torch.no_grad():
        logits = model(images).logits
    assert logits.shape[-2:] == (16, 16)
    _check_regions(model, regions, images, logits, background=None)
    # Pixels are counted at the logits' resolution, where the target is summed.
    assert sum(r.pixels for r in regions[1]) == 16 * 16
    assert all(r.maps["gradcam"].shape == (64, 64) for r in regions[1])


def test_hugging_face_upernet_reads_the_backbone():
    transformers = pytest.importorskip("transformers")
    backbone = transformers.ConvNextConfig(
        num_channels=3,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone, hidden_size=16, num_labels=3, use_auxiliary_head=False
    )
    torch.manual_seed(0)
    model = transformers.UperNetForSemanticSegmentation(config).eval()
    images = torch.rand(2, 3, 64, 64)
    cam = SegmentationCAM(model)
    regions = cam.explain(images, background=None)
    # The last stage's feature map, normalised, as the UperNet head reads it.
    assert cam.layer == "backbone.hidden_states_norms.stage4"
    with torch.no_grad():
        logits = model(images).logits
    _check_regions(model, regions, images, logits, background=None)


def test_plain_tensor_output_and_default_layer():
    torch.manual_seed(0)
    model = TinySegmenter(3).eval()
    images = torch.rand(3, 3, 32, 32)
    cam = SegmentationCAM(model)
    regions = cam.explain(images, background=0)
    assert cam.layer == "features"
    with torch.no_grad():
        logits = model(images)
    _check_regions(model, regions, images, logits, background=0)


def test_golden_maps_one_class_and_several():
    """logits = ReLU(image): class c's Grad-CAM weight is |region_c| / (h w) on channel c
    only, so its map is channel c normalised; HiResCAM's is channel c inside the region."""
    model = ChannelSegmenter()
    images, predicted = channel_images()
    cam = SegmentationCAM(model, methods=("gradcam", "hirescam"))
    regions = cam.explain(images)  # background 0 left out
    assert [[r.class_id for r in row] for row in regions] == [[1], [1, 2]]
    for b, row in enumerate(regions):
        for region in row:
            c = region.class_id
            inside = predicted[b] == c
            assert region.pixels == int(inside.sum())
            assert region.target_score == pytest.approx(float(images[b, c][inside].sum()), 1e-6)
            torch.testing.assert_close(region.maps["gradcam"], normalize_maps(images[b, c]))
            torch.testing.assert_close(
                region.maps["hirescam"], normalize_maps(images[b, c] * inside)
            )
            assert region.evidence == {"gradcam": True, "hirescam": True}


def test_batch_equals_one_image_at_a_time():
    """Several classes per image from one batched backward give each class its own map."""
    torch.manual_seed(1)
    model = TinySegmenter(4).eval()
    images = torch.rand(3, 3, 32, 32)
    cam = SegmentationCAM(model, methods=("gradcam++", "layercam"))
    together = cam.explain(images, classes=[1, 2, 3])
    for b in range(3):
        (alone,) = cam.explain(images[b : b + 1], classes=[1, 2, 3])
        for joint, single in zip(together[b], alone):
            assert joint.class_id == single.class_id
            assert joint.target_score == pytest.approx(single.target_score, rel=1e-5)
            for method in cam.methods:
                torch.testing.assert_close(joint.maps[method], single.maps[method])


def test_class_absent_from_the_prediction():
    model = ChannelSegmenter()
    images, _ = channel_images()
    regions = SegmentationCAM(model).explain(images, classes=[[2, 1], [2]])
    absent, present = regions[0][0], regions[0][1]
    assert (absent.class_id, absent.pixels, absent.target_score) == (2, 0, 0.0)
    assert absent.evidence == {"gradcam": False, "hirescam": False}
    assert all(float(m.abs().max()) == 0.0 for m in absent.maps.values())
    assert present.class_id == 1 and present.pixels == 30
    assert [r.class_id for r in regions[1]] == [2]


def test_no_class_in_any_image():
    model = ChannelSegmenter()
    images = torch.zeros(2, 3, 8, 8)
    images[:, 0] = 1.0  # all background
    assert SegmentationCAM(model).explain(images) == [[], []]


def test_clear_errors():
    model = ChannelSegmenter()
    images, _ = channel_images()
    with pytest.raises(ValueError, match=r"not in 0\.\.2"):
        SegmentationCAM(model).explain(images, classes=[3])
    with pytest.raises(ValueError, match="one list per image"):
        SegmentationCAM(model).explain(images, classes=[[1], [1], [2]])
    deeplab = tv_segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    with pytest.raises(ValueError, match=r"dict of feature maps.*'backbone\.16' \(out\)"):
        SegmentationCAM(deeplab, layer="backbone")
    with pytest.raises(ValueError, match="guided"):
        SegmentationCAM(model, methods=("guided_gradcam",))
    with pytest.raises(ValueError, match=r"returned a tensor of shape \(2, 5\)"):
        segmentation_logits(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="mapping with keys"):
        segmentation_logits({"aux": torch.zeros(2, 3, 4, 4)})
