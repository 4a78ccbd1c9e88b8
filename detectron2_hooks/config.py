"""Config keys for Grad-CAM on detectron2, and the switch from a stock config to the CAM one.

A user keeps their model-zoo YAML::

    cfg = get_cfg()
    cfg.merge_from_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    cfg = to_cam_config(cfg)         # CAMRes5ROIHeads, plus cfg.GRADCAM.*
    model = build_model(cfg)         # loads the stock checkpoint: same state_dict keys
"""

from __future__ import annotations

from detectron2.config import CfgNode
from torch import nn

from lightning_gradcam.core.methods import check_methods

from .adapters import CAM_META_ARCHS, CAM_ROI_HEADS

__all__ = [
    "add_gradcam_config",
    "to_cam_config",
    "default_layer",
    "model_default_layer",
    "config_methods",
]

#: The conventional layer per detector: the per-ROI block for Faster R-CNN (a detection's own
#: map), the last classification-subnet conv for RetinaNet.
_DEFAULT_LAYERS = {
    "CAMRes5ROIHeads": "roi_heads.res5",
    "CAMStandardROIHeads": "roi_heads.box_pooler",
    "CAMRetinaNet": "head.cls_subnet.7",
}


def add_gradcam_config(cfg: CfgNode) -> CfgNode:
    """Add the ``cfg.GRADCAM`` node (in place; returns ``cfg``). Existing values are kept.

    Keys:
        ENABLED (bool): whether a training hook built from this config runs at all.
        LAYER (str): dotted module name to explain; ``""`` = the detector's default
            (``roi_heads.res5`` C4, ``roi_heads.box_pooler`` FPN, ``head.cls_subnet.7``
            RetinaNet).
        METHODS (list[str]): CAM methods that detectors accept (``gradcam``, ``gradcam++``,
            ``xgradcam``, ``layercam``, ``hirescam``, or one added with
            ``lightning_gradcam.register_method``); checked by ``config_methods``.
        PERIOD (int): iterations between two CAM passes during training.
        NUM_IMAGES (int): images explained per pass.
        MAX_DETECTIONS (int): top detections explained per image.
    """
    if "GRADCAM" in cfg:
        node = cfg.GRADCAM
    else:
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.GRADCAM = CfgNode()
        node = cfg.GRADCAM
        if was_frozen:
            cfg.freeze()
    defaults = {
        "ENABLED": True,
        "LAYER": "",
        "METHODS": ["gradcam", "gradcam++"],
        "PERIOD": 100,
        "NUM_IMAGES": 4,
        "MAX_DETECTIONS": 5,
    }
    missing = {k: v for k, v in defaults.items() if k not in node}
    if missing:
        was_frozen = node.is_frozen()
        node.defrost()
        for key, value in missing.items():
            setattr(node, key, value)
        if was_frozen:
            node.freeze()
    return cfg


def to_cam_config(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` that builds the CAM adapters, with ``cfg.GRADCAM`` added.

    ``Res5ROIHeads`` -> ``CAMRes5ROIHeads``, ``StandardROIHeads`` -> ``CAMStandardROIHeads``
    (``MODEL.ROI_HEADS.NAME``), ``RetinaNet`` -> ``CAMRetinaNet``
    (``MODEL.META_ARCHITECTURE``). Names that are already CAM ones are kept.

    Raises:
        ValueError: a detector with no CAM adapter (e.g. ``CascadeROIHeads``, ``FCOS``).
    """
    cfg = cfg.clone()
    cfg.defrost()
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in CAM_META_ARCHS:
        cfg.MODEL.META_ARCHITECTURE = CAM_META_ARCHS[arch]
    elif arch not in CAM_META_ARCHS.values():
        heads = cfg.MODEL.ROI_HEADS.NAME
        if arch not in ("GeneralizedRCNN",) or (
            heads not in CAM_ROI_HEADS and heads not in CAM_ROI_HEADS.values()
        ):
            supported = ", ".join([*CAM_ROI_HEADS, *CAM_META_ARCHS])
            raise ValueError(
                f"no CAM adapter for META_ARCHITECTURE={arch!r}, ROI_HEADS.NAME={heads!r}; "
                f"supported: GeneralizedRCNN with {supported}"
            )
        cfg.MODEL.ROI_HEADS.NAME = CAM_ROI_HEADS.get(heads, heads)
    add_gradcam_config(cfg)
    return cfg


def default_layer(cfg: CfgNode) -> str:
    """``cfg.GRADCAM.LAYER`` if set, else the detector's conventional layer."""
    if "GRADCAM" in cfg and cfg.GRADCAM.LAYER:
        return cfg.GRADCAM.LAYER
    name = cfg.MODEL.META_ARCHITECTURE
    name = CAM_META_ARCHS.get(name, name)
    if name not in _DEFAULT_LAYERS:
        heads = cfg.MODEL.ROI_HEADS.NAME
        name = CAM_ROI_HEADS.get(heads, heads)
    try:
        return _DEFAULT_LAYERS[name]
    except KeyError:
        raise ValueError(f"no default CAM layer for {name!r}; set cfg.GRADCAM.LAYER") from None


def model_default_layer(model: nn.Module) -> str:
    """The conventional layer of a detector built with the CAM adapters (same table as
    :func:`default_layer`, looked up by the class of the model or of its ROI heads)."""
    for part in (model, getattr(model, "roi_heads", None)):
        for cls in type(part).__mro__:
            if cls.__name__ in _DEFAULT_LAYERS:
                return _DEFAULT_LAYERS[cls.__name__]
    raise ValueError(f"no default CAM layer for {type(model).__name__}; name a layer")


def config_methods(cfg: CfgNode) -> tuple[str, ...]:
    """``cfg.GRADCAM.METHODS`` checked against the method registry (what detectors accept)."""
    methods = cfg.GRADCAM.METHODS
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    try:
        return check_methods(tuple(m.strip() for m in methods), detectors=True)
    except ValueError as exc:
        raise ValueError(f"cfg.GRADCAM.METHODS: {exc}") from None
