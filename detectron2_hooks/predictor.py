"""CAMPredictor: ``DefaultPredictor``, with a map per detection.

``DefaultPredictor(cfg)(image)`` resizes an ``(H, W, C)`` image with the test-time
``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, runs the model on
``{"image", "height", "width"}`` and returns the detections in the image's own pixels.
``CAMPredictor(cfg)(image)`` does the same steps and returns those detections (same boxes,
classes and scores) as :class:`~detectron2_hooks.assembly.Detection` records, each with its
maps in the image's own pixels, from :class:`~detectron2_hooks.explain.Detectron2CAM`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from torch import nn

from .assembly import Detection
from .explain import Detectron2CAM
from .weights import RANDOM_WEIGHTS, load_detector_weights, resolve_weights

__all__ = ["CAMPredictor", "check_image"]


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` if it is an ``(H, W, 3)`` uint8 array, else a ValueError saying how to get
    one."""
    if isinstance(image, torch.Tensor):
        raise ValueError(
            "CAMPredictor takes an (H, W, 3) uint8 numpy image (cv2.imread gives BGR); for a "
            "(C, H, W) tensor use Detectron2CAM.explain([{'image': tensor}])"
        )
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"CAMPredictor takes an (H, W, 3) uint8 numpy image, got {type(image).__name__}"
            + (f" of shape {tuple(shape)}" if shape is not None else "")
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"CAMPredictor takes a uint8 image (pixel values 0-255), got dtype {image.dtype}"
        )
    return image


class CAMPredictor:
    """``DefaultPredictor``-style detections with their CAM maps, for one image as a user
    has it.

    ``pred = CAMPredictor(cfg, methods=("gradcam",))``; ``dets = pred(image)``: the
    detections detectron2 reports for ``image`` (``(H, W, 3)`` uint8 in ``cfg.INPUT.FORMAT``:
    BGR for the model zoo, as ``cv2.imread`` gives), highest score first, boxes and
    ``det.maps[method]`` in ``image``'s pixels.

    Args:
        cfg: a detectron2 ``CfgNode``; a stock one is switched to the CAM adapters
            (``to_cam_config``). The model is built from it and ``MODEL.WEIGHTS`` loaded
            without running code from the file (``detectron2_hooks.weights``), unless
            ``model`` is given. ``INPUT.FORMAT``, ``INPUT.MIN_SIZE_TEST`` and
            ``INPUT.MAX_SIZE_TEST`` are read as ``DefaultPredictor`` reads them.
        layer, methods, score: as :class:`Detectron2CAM`.
        max_detections: detections explained per image, highest score first (None: all).
        model: an already built (and loaded) CAM detector to use instead of building one.

    Unlike ``DefaultPredictor``, whose input is always BGR, the image is taken in the model's
    own ``INPUT.FORMAT`` (the same array for every BGR model).
    """

    def __init__(
        self,
        cfg: CfgNode,
        layer: str | Sequence[str] | None = None,
        methods: str | Sequence[str] = ("gradcam", "gradcam++"),
        score: str = "logit",
        *,
        max_detections: int | None = 10,
        model: nn.Module | None = None,
    ):
        from .config import to_cam_config

        if not isinstance(cfg, CfgNode):
            raise TypeError(
                f"CAMPredictor takes a detectron2 CfgNode (get_cfg()), got {type(cfg).__name__}; "
                "for a LazyConfig, instantiate the model and pass it with model=, with a "
                "CfgNode holding INPUT.FORMAT / MIN_SIZE_TEST / MAX_SIZE_TEST"
            )
        if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: only BGR and RGB are supported")
        self.cfg = cfg.clone()
        if model is None:
            model = self._build(to_cam_config(self.cfg))
        self.model = model.eval()
        self.input_format = str(self.cfg.INPUT.FORMAT)
        size = int(self.cfg.INPUT.MIN_SIZE_TEST)
        self.aug = (
            T.ResizeShortestEdge([size, size], self.cfg.INPUT.MAX_SIZE_TEST) if size else None
        )
        self.max_detections = max_detections
        self.cam = Detectron2CAM(self.model, layer=layer, methods=methods, score=score)

    @staticmethod
    def _build(cfg: CfgNode) -> nn.Module:
        from detectron2.modeling import build_model

        model = build_model(cfg)
        weights = str(cfg.MODEL.WEIGHTS)
        if weights and weights != RANDOM_WEIGHTS:
            load_detector_weights(model, resolve_weights(weights))
        return model

    def model_input(self, image: np.ndarray) -> dict:
        """The model input ``DefaultPredictor`` makes of ``image``: resized by the test-time
        ``ResizeShortestEdge``, ``(C, h, w)`` float32, with the image's ``height``/``width``."""
        image = check_image(image)
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image) if self.aug else image
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        device = next(self.model.parameters()).device
        return {"image": tensor.to(device), "height": height, "width": width}

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """The explained detections of ``image`` (``(H, W, 3)`` uint8 in ``INPUT.FORMAT``),
        highest score first, in ``image``'s pixels."""
        (detections,) = self.cam.explain([self.model_input(image)], self.max_detections)
        return detections
