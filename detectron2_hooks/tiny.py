"""Tiny detectron2 configs that build and run in a second on a CPU (tests, demos, benchmarks)."""

from __future__ import annotations

from detectron2.config import CfgNode, get_cfg

from .config import add_gradcam_config

__all__ = ["tiny_config", "TINY_KINDS"]

TINY_KINDS = ("c4", "fpn", "retinanet")


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
