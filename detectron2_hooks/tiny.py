"""Tiny detectron2 configs that build and run in a second on a CPU (tests, demos, benchmarks)."""

from __future__ import annotations

from detectron2.config import CfgNode, get_cfg
from detectron2.layers import ShapeSpec

from .config import add_gradcam_config, to_cam_config

__all__ = [
    "tiny_config",
    "tiny_zoo_config",
    "tiny_lazy_config",
    "TINY_KINDS",
    "TINY_ZOO_YAML",
    "TINY_ZOO_LAZY",
]

TINY_KINDS = ("c4", "fpn", "retinanet")
#: ``tiny_zoo_config`` kinds -> the shipped model-zoo YAML they shrink.
TINY_ZOO_YAML = {
    "c4": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "fpn": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "retinanet": "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "cascade": "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
    "panoptic": "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
}
#: ``tiny_lazy_config`` kinds -> the shipped LazyConfig they shrink.
TINY_ZOO_LAZY = {
    "retinanet": "common/models/retinanet.py",
    "fcos": "common/models/fcos.py",
    "cascade": "common/models/cascade_rcnn.py",
    "panoptic": "common/models/panoptic_fpn.py",
    "vitdet": "common/models/mask_rcnn_vitdet.py",
    "mask_rcnn_lsj": "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
}
_PIXEL_STD = [57.4, 57.1, 58.4]


def tiny_config(
    kind: str,
    num_classes: int = 3,
    *,
    cam: bool = True,
    min_size: int = 128,
    max_size: int = 256,
    proposals: int = 16,
    score_thresh: float | None = None,
) -> CfgNode:
    """A ResNet-18 detector config from ``get_cfg()``, small enough for CPU tests.

    Args:
        kind: ``"c4"`` (Faster R-CNN, ``Res5ROIHeads``), ``"fpn"`` (Faster R-CNN,
            ``StandardROIHeads`` on an FPN) or ``"retinanet"``.
        num_classes: foreground classes.
        cam: build the CAM adapters (``CAMRes5ROIHeads`` / ``CAMStandardROIHeads`` /
            ``CAMRetinaNet``) if True, the stock detectron2 classes if False; the two share
            every ``state_dict`` key.
        min_size, max_size: ``INPUT.MIN_SIZE_*`` / ``MAX_SIZE_*`` (used by data mappers and
            ``DefaultPredictor``; the model itself does not resize).
        proposals: RPN proposals kept per image (``POST_NMS_TOPK_*``); Faster R-CNN only.
        score_thresh: ``SCORE_THRESH_TEST``; default low enough that a randomly initialised
            model detects something (0.05 Faster R-CNN, 0.001 RetinaNet).

    ``RESNETS.DEPTH=18``, ``RES2_OUT_CHANNELS=64``, FPN and box-head widths reduced,
    ``PIXEL_STD=(57.4, 57.1, 58.4)`` (the default of 1 makes a randomly initialised model
    diverge within a few training steps), ``MODEL.DEVICE="cpu"``, ``cfg.GRADCAM.*`` added.
    Build with ``detectron2.modeling.build_model(cfg)`` after ``import detectron2_hooks``.
    """
    if kind not in TINY_KINDS:
        raise ValueError(f"kind must be one of {TINY_KINDS}, got {kind!r}")
    cfg = get_cfg()
    add_gradcam_config(cfg)
    m = cfg.MODEL
    m.DEVICE = "cpu"
    m.PIXEL_STD = [57.4, 57.1, 58.4]
    m.WEIGHTS = ""
    m.MASK_ON = False
    m.RESNETS.DEPTH = 18
    m.RESNETS.RES2_OUT_CHANNELS = 64
    m.RESNETS.NORM = "FrozenBN"
    cfg.INPUT.MIN_SIZE_TRAIN = (min_size,)
    cfg.INPUT.MAX_SIZE_TRAIN = max_size
    cfg.INPUT.MIN_SIZE_TEST = min_size
    cfg.INPUT.MAX_SIZE_TEST = max_size
    cfg.DATALOADER.NUM_WORKERS = 0

    if kind in ("c4", "fpn"):
        m.META_ARCHITECTURE = "GeneralizedRCNN"
        m.ROI_HEADS.NUM_CLASSES = num_classes
        m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
        m.ROI_HEADS.SCORE_THRESH_TEST = 0.05 if score_thresh is None else score_thresh
        m.RPN.PRE_NMS_TOPK_TRAIN = m.RPN.PRE_NMS_TOPK_TEST = 4 * proposals
        m.RPN.POST_NMS_TOPK_TRAIN = m.RPN.POST_NMS_TOPK_TEST = proposals
        m.RPN.BATCH_SIZE_PER_IMAGE = 64
        cfg.TEST.DETECTIONS_PER_IMAGE = 20
    if kind == "c4":
        m.BACKBONE.NAME = "build_resnet_backbone"
        m.RESNETS.OUT_FEATURES = ["res4"]
        m.RPN.IN_FEATURES = ["res4"]
        m.ROI_HEADS.IN_FEATURES = ["res4"]
        m.ROI_HEADS.NAME = "CAMRes5ROIHeads" if cam else "Res5ROIHeads"
        m.ANCHOR_GENERATOR.SIZES = [[32, 64, 128]]
        # Only the C4 res5 head reads it (R18 stages are BasicBlocks): a 128-wide bottleneck.
        m.RESNETS.WIDTH_PER_GROUP = 16
    elif kind == "fpn":
        m.BACKBONE.NAME = "build_resnet_fpn_backbone"
        m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        m.FPN.OUT_CHANNELS = 64
        m.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
        m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        m.ROI_HEADS.NAME = "CAMStandardROIHeads" if cam else "StandardROIHeads"
        m.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
        m.ROI_BOX_HEAD.NUM_FC = 2
        m.ROI_BOX_HEAD.FC_DIM = 128
        m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    elif kind == "retinanet":
        m.META_ARCHITECTURE = "CAMRetinaNet" if cam else "RetinaNet"
        m.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
        m.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
        m.FPN.IN_FEATURES = ["res3", "res4", "res5"]
        m.FPN.OUT_CHANNELS = 64
        m.ANCHOR_GENERATOR.SIZES = [
            [x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in [32, 64, 128, 256, 512]
        ]
        m.RETINANET.NUM_CLASSES = num_classes
        m.RETINANET.SCORE_THRESH_TEST = 0.001 if score_thresh is None else score_thresh
        m.RETINANET.TOPK_CANDIDATES_TEST = 100
        cfg.TEST.DETECTIONS_PER_IMAGE = 20
    return cfg


def tiny_zoo_config(kind: str, num_classes: int = 3, *, cam: bool = True) -> CfgNode:
    """A shipped model-zoo YAML (``TINY_ZOO_YAML[kind]``) shrunk for CPU tests.

    ResNet-18, 64-channel FPN, 128-wide box head, 32-wide mask (and semantic) heads, 16
    proposals per image, RetinaNet's score threshold 0.001 (a random model detects something), ``PIXEL_STD=(57.4, 57.1, 58.4)``, CPU; every other key as shipped.
    ``cam``: switched by ``to_cam_config`` (with ``cfg.GRADCAM``) or stock.
    """
    from detectron2 import model_zoo

    if kind not in TINY_ZOO_YAML:
        raise ValueError(f"kind must be one of {tuple(TINY_ZOO_YAML)}, got {kind!r}")
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(TINY_ZOO_YAML[kind]))
    m = cfg.MODEL
    m.DEVICE = "cpu"
    m.WEIGHTS = ""
    m.PIXEL_STD = _PIXEL_STD
    m.RESNETS.DEPTH = 18
    m.RESNETS.RES2_OUT_CHANNELS = 64
    m.RESNETS.WIDTH_PER_GROUP = 16  # only the C4 res5 head reads it: a 128-wide bottleneck
    m.FPN.OUT_CHANNELS = 64
    m.ROI_HEADS.NUM_CLASSES = num_classes
    m.RETINANET.NUM_CLASSES = num_classes
    m.RETINANET.SCORE_THRESH_TEST = 0.001
    m.RETINANET.TOPK_CANDIDATES_TEST = 100
    m.ROI_BOX_HEAD.FC_DIM = 128
    m.ROI_MASK_HEAD.CONV_DIM = 32
    m.ROI_MASK_HEAD.NUM_CONV = 2
    m.SEM_SEG_HEAD.CONVS_DIM = 32
    m.SEM_SEG_HEAD.NUM_CLASSES = num_classes + 1
    m.RPN.PRE_NMS_TOPK_TEST = m.RPN.PRE_NMS_TOPK_TRAIN = 64
    m.RPN.POST_NMS_TOPK_TEST = m.RPN.POST_NMS_TOPK_TRAIN = 16
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 256
    cfg.DATALOADER.NUM_WORKERS = 0
    return to_cam_config(cfg) if cam else cfg


def tiny_lazy_config(kind: str, num_classes: int = 3, *, cam: bool = True):
    """A shipped LazyConfig (``TINY_ZOO_LAZY[kind]``, loaded by ``model_zoo.get_config``)
    shrunk for CPU tests; instantiate with ``instantiate(cfg.model)``.

    ResNet-18 (ViTDet: a 2-block ViT, ``embed_dim=96, img_size=160``, ``square_pad=160``),
    64-channel FPN, narrow heads, 16 proposals per image, score thresholds low enough that a
    random model detects something (0.001 RetinaNet/FCOS), ``pixel_std=(57.4, 57.1, 58.4)``;
    every other field as shipped. ``cam``: ``to_cam_config`` applied, or stock targets.
    """
    from detectron2 import model_zoo

    if kind not in TINY_ZOO_LAZY:
        raise ValueError(f"kind must be one of {tuple(TINY_ZOO_LAZY)}, got {kind!r}")
    cfg = model_zoo.get_config(TINY_ZOO_LAZY[kind])
    model = cfg.model
    model.pixel_std = _PIXEL_STD
    backbone = model.backbone
    backbone.out_channels = 64
    if kind == "vitdet":
        backbone.net.update(depth=2, embed_dim=96, img_size=160, drop_path_rate=0.0)
        backbone.square_pad = 160
    else:
        stages = backbone.bottom_up.stages
        stages.depth = 18
        stages.pop("stride_in_1x1", None)  # a bottleneck argument; R18 has basic blocks
        if kind == "mask_rcnn_lsj":
            # SyncBN / NaiveSyncBatchNorm need a process group only in training; FrozenBN
            # keeps the tiny model's eval forward identical.
            backbone.bottom_up.stem.norm = stages.norm = backbone.norm = "FrozenBN"
    if kind in ("retinanet", "fcos"):
        if kind == "retinanet":
            backbone.top_block.in_channels = 512  # R18's res5
        else:
            backbone.top_block.in_channels = 64  # P5
        model.head.input_shape = [ShapeSpec(channels=64)] * 5
        # FCOS's GN has 32 groups: 64 channels keep two values per group on a 1x1 P7.
        width = 64 if kind == "fcos" else 32
        model.head.conv_dims = [width] * 4
        model.num_classes = num_classes
        model.test_score_thresh = 0.001
        model.test_topk_candidates = 100
        model.max_detections_per_image = 20
    else:
        rpn = model.proposal_generator
        rpn.head.in_channels = 64
        rpn.pre_nms_topk = (64, 64)
        rpn.post_nms_topk = (16, 16)
        heads = model.roi_heads
        heads.num_classes = num_classes
        box_heads = heads.box_heads if kind == "cascade" else [heads.box_head]
        box_predictors = heads.box_predictors if kind == "cascade" else [heads.box_predictor]
        for box_head in box_heads:
            box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
            if box_head.conv_dims:
                box_head.conv_dims = [32] * len(box_head.conv_dims)
            box_head.fc_dims = [128] * len(box_head.fc_dims)
        for predictor in box_predictors:
            predictor.input_shape = ShapeSpec(channels=128)
            predictor.test_topk_per_image = 20
        if kind == "mask_rcnn_lsj":
            heads.box_head.conv_norm = heads.mask_head.conv_norm = "FrozenBN"
        heads.mask_head.input_shape = ShapeSpec(channels=64, width=14, height=14)
        heads.mask_head.conv_dims = [32, 32]
        if kind == "panoptic":
            model.sem_seg_head.conv_dims = 32
            model.sem_seg_head.num_classes = num_classes + 1
    return to_cam_config(cfg) if cam else cfg
