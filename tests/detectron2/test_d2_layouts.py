"""Detectron2CAM at image-level layers of detectron2's ViT (ViTDet) backbone, whose blocks
output channels-last ``(B, h, w, C)``: maps on the h x w grid, the same as the permuted map."""

from __future__ import annotations

import warnings

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec

from detectron2_hooks import Detectron2CAM
from detectron2_hooks.adapters import CAMStandardROIHeads

warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(scope="module")
def vitdet():
    """The shipped Mask R-CNN ViTDet config, tiny (depth 2, 96 wide, 160 px), boxes only."""
    config = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    net = config.backbone.net
    net.depth, net.embed_dim, net.img_size, net.num_heads = 2, 96, 160, 2
    net.window_block_indexes, net.drop_path_rate = [0], 0.0
    config.backbone.square_pad = 160
    config.roi_heads._target_ = CAMStandardROIHeads
    config.roi_heads.num_classes = 3
    config.roi_heads.mask_in_features = None
    config.pixel_std = [57.4, 57.1, 58.4]
    config.proposal_generator.pre_nms_topk = (200, 100)  # few proposals, a thin box head
    config.proposal_generator.post_nms_topk = (100, 20)
    config.roi_heads.box_head.conv_dims = [32]
    config.roi_heads.box_head.fc_dims = [64]
    config.roi_heads.box_predictor.input_shape = ShapeSpec(channels=64)
    torch.manual_seed(0)
    model = instantiate(config).eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    return model


def test_vitdet_block_maps_are_on_the_token_grid(vitdet):
    torch.manual_seed(1)
    inputs = [{"image": torch.rand(3, 128, 160) * 255}]
    layer = "backbone.net.blocks.1"
    out = Detectron2CAM(vitdet, layer=layer, methods=("gradcam", "hirescam")).explain(
        inputs, max_detections=2
    )
    assert out[0], "the tiny detector found nothing to explain"

    def permuted(a):  # the layout told by hand
        return a.permute(0, 3, 1, 2)

    by_hand = Detectron2CAM(
        vitdet, layer=layer, methods=("gradcam", "hirescam"), reshape=permuted
    ).explain(inputs, max_detections=2)
    for det, ref in zip(out[0], by_hand[0]):
        assert det.layer_kinds[layer] == "image"
        for method in ("gradcam", "hirescam"):
            assert det.layer_maps[method].shape == (10, 10)  # 160 px / patch 16, not 10x96
            assert det.maps[method].shape == (128, 160)
            torch.testing.assert_close(det.layer_maps[method], ref.layer_maps[method])
