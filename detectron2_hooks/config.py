"""Config keys for Grad-CAM on detectron2, and the switch from a stock config to the CAM one.

A user keeps their model-zoo YAML::

    cfg = get_cfg()
    cfg.merge_from_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    cfg = to_cam_config(cfg)         # CAMRes5ROIHeads, plus cfg.GRADCAM.*
    model = build_model(cfg)         # loads the stock checkpoint: same state_dict keys

or a LazyConfig (``.py``, e.g. ``common/models/retinanet.py`` or ``new_baselines/*.py``)::

    cfg = LazyConfig.load(model_zoo.get_config_file("common/models/cascade_rcnn.py"))
    cfg = to_cam_config(cfg)         # model.roi_heads._target_ = CAMCascadeROIHeads
    model = instantiate(cfg.model)
"""

from __future__ import annotations

import copy
from typing import Any

from detectron2.config import CfgNode
from omegaconf import DictConfig
from torch import nn

from lightning_gradcam.core.methods import check_methods

from . import adapters
from .adapters import CAM_META_ARCHS, CAM_ROI_HEADS, ROI_META_ARCHS
from .scores import check_score

__all__ = [
    "add_gradcam_config",
    "to_cam_config",
    "default_layer",
    "model_default_layer",
    "config_methods",
    "config_score",
]

#: The conventional layer per detector: the per-ROI block for Faster R-CNN (a detection's own
#: map), the last classification-subnet conv for RetinaNet.
_DEFAULT_LAYERS = {
    "CAMRes5ROIHeads": "roi_heads.res5",
    "CAMStandardROIHeads": "roi_heads.box_pooler",
    "CAMRetinaNet": "head.cls_subnet.7",
    "CAMCascadeROIHeads": "roi_heads.box_pooler",
    # The shipped FCOS head (common/models/fcos.py) has GN: conv, GN, ReLU per conv, so its
    # last classification-subnet block is .11 (RetinaNet's plain conv, ReLU: .7).
    "CAMFCOS": "head.cls_subnet.11",
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
        SCORE (str): the scalar differentiated per detection: ``"logit"`` (its class logit
            before the softmax / sigmoid; does not saturate) or ``"probability"`` (the score
            detectron2 reports); checked by ``config_score``.
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
        "SCORE": "logit",
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


def to_cam_config(cfg: CfgNode | DictConfig) -> CfgNode | DictConfig:
    """A copy of ``cfg`` that builds the CAM adapters; the argument is left unchanged.

    A ``CfgNode`` (YAML): ``Res5ROIHeads`` -> ``CAMRes5ROIHeads``, ``StandardROIHeads`` ->
    ``CAMStandardROIHeads``, ``CascadeROIHeads`` -> ``CAMCascadeROIHeads``
    (``MODEL.ROI_HEADS.NAME``, with ``META_ARCHITECTURE`` ``GeneralizedRCNN`` or
    ``PanopticFPN``), ``RetinaNet`` -> ``CAMRetinaNet`` (``MODEL.META_ARCHITECTURE``), and
    ``cfg.GRADCAM`` added.

    A LazyConfig (an omegaconf ``DictConfig`` from ``LazyConfig.load`` or
    ``model_zoo.get_config``, with a ``model`` node, or that ``model`` node itself): the same
    swap on the ``_target_`` s, ``model.roi_heads._target_`` (for a ``GeneralizedRCNN`` or
    ``PanopticFPN`` model) or ``model._target_`` (``RetinaNet`` -> ``CAMRetinaNet``, ``FCOS``
    -> ``CAMFCOS``); every other field is kept (no ``GRADCAM`` node: a LazyConfig training
    loop gives the hook its settings as constructor arguments). A target written as a class
    stays a class, one written as a ``"module.Class"`` string becomes the adapter's string.

    Names or targets that are already CAM ones are kept. Only the stock classes themselves
    are switched: a subclass of them may change the inference the adapters re-implement.

    Raises:
        ValueError: a detector with no CAM adapter (e.g. ``SemanticSegmentor``, a user's own
            ROI heads); TypeError: neither a CfgNode nor a LazyConfig.
    """
    if isinstance(cfg, CfgNode):
        return _to_cam_cfgnode(cfg)
    if isinstance(cfg, DictConfig):
        return _to_cam_lazy(cfg)
    raise TypeError(
        f"to_cam_config takes a detectron2 CfgNode (get_cfg()) or a LazyConfig (LazyConfig.load"
        f"), got {type(cfg).__name__}"
    )


def _to_cam_cfgnode(cfg: CfgNode) -> CfgNode:
    cfg = cfg.clone()
    cfg.defrost()
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch in ("FCOS", "CAMFCOS"):
        raise ValueError(
            "META_ARCHITECTURE FCOS: detectron2 builds FCOS from a LazyConfig only (it has no "
            "from_config); use common/models/fcos.py and to_cam_config on that LazyConfig"
        )
    if arch in CAM_META_ARCHS:
        cfg.MODEL.META_ARCHITECTURE = CAM_META_ARCHS[arch]
    elif arch not in CAM_META_ARCHS.values():
        heads = cfg.MODEL.ROI_HEADS.NAME
        if arch not in ROI_META_ARCHS or (
            heads not in CAM_ROI_HEADS and heads not in CAM_ROI_HEADS.values()
        ):
            raise ValueError(
                f"no CAM adapter for META_ARCHITECTURE={arch!r}, ROI_HEADS.NAME={heads!r}; "
                f"supported: {' or '.join(ROI_META_ARCHS)} with ROI_HEADS.NAME "
                f"{', '.join(CAM_ROI_HEADS)}, or META_ARCHITECTURE RetinaNet"
            )
        cfg.MODEL.ROI_HEADS.NAME = CAM_ROI_HEADS.get(heads, heads)
    add_gradcam_config(cfg)
    return cfg


def lazy_target(target: Any) -> Any:
    """The object a LazyConfig ``_target_`` names (a class, or a ``"module.Class"`` string)."""
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            return locate(target)
        except Exception:
            return target
    return target


def _swap(node, switch: dict[type, type]) -> bool:
    """Set ``node._target_`` to its adapter, in the style it was written; whether it had one."""
    target = node.get("_target_")
    cls = lazy_target(target)
    if cls in switch.values():
        return True
    if cls not in switch:
        return False
    cam = switch[cls]
    node._target_ = f"{cam.__module__}.{cam.__qualname__}" if isinstance(target, str) else cam
    return True


def _target_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _to_cam_lazy(cfg):
    model = cfg if "_target_" in cfg else cfg.get("model")
    if not isinstance(model, DictConfig) or "_target_" not in model:
        raise ValueError(
            "this LazyConfig has no 'model' node with a _target_ (and is no model node "
            "itself); give the config of a detector, e.g. "
            "model_zoo.get_config('common/models/retinanet.py')"
        )
    cfg = copy.deepcopy(cfg)
    model = cfg if "_target_" in cfg else cfg.model
    if _swap(model, adapters.CAM_META_ARCH_CLASSES):
        return cfg
    arch = lazy_target(model.get("_target_"))
    roi_archs = adapters.ROI_META_ARCH_CLASSES
    heads = adapters.CAM_ROI_HEADS_CLASSES
    roi_heads = model.get("roi_heads")
    if arch in roi_archs and roi_heads is not None and _swap(roi_heads, heads):
        return cfg
    found = _target_name(model.get("_target_"))
    if arch in roi_archs:
        found += f" with roi_heads {_target_name(roi_heads.get('_target_')) if roi_heads else None}"
    raise ValueError(
        f"no CAM adapter for the LazyConfig model {found}; supported: model._target_ "
        f"{' or '.join(ROI_META_ARCHS)} with roi_heads._target_ {', '.join(CAM_ROI_HEADS)}, "
        f"or model._target_ {', '.join(CAM_META_ARCHS)}"
    )


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


def config_score(cfg: CfgNode) -> str:
    """``cfg.GRADCAM.SCORE`` checked (``"logit"`` or ``"probability"``)."""
    try:
        return check_score(str(cfg.GRADCAM.SCORE))
    except ValueError as exc:
        raise ValueError(f"cfg.GRADCAM.SCORE: {exc}") from None
