"""One image explained by one torchvision classifier, as ``lightning-gradcam`` writes it: the
seed's pictures, the prediction, and optionally how faithful the maps are.

The pictures are those of the original Grad-CAM.pytorch, keyed by the ``{kind}`` part of
``{image}-{network}-{kind}.png`` (:func:`picture_suffixes`): heat map and overlay for Grad-CAM
(``heatmap``, ``cam``) and Grad-CAM++ (``heatmap++``, ``cam++``), guided backpropagation
(``gb``), guided Grad-CAM (``cam_gb``) and guided Grad-CAM++ (``cam++_gb``); with
``grid=True`` also ``grid``, the input and every picture side by side.

Example::

    spec = prepare_network("resnet18", "weights.pth", None, None, None)
    engine = CAMEngine(materialize(spec, "cpu"), layer=spec.layer, methods=("gradcam",))
    done = explain_image(engine, spec, read_image("cat.jpg"), ("gradcam",), torch.device("cpu"))
    done.pictures["cam"], spec.class_name(done.predicted), done.probability
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .core.methods import get_method
from .core.targets import logits_of
from .engine import CAMEngine, CAMResult
from .models.networks import NetworkSpec
from .pictures import seed_pictures, seed_sheet

__all__ = [
    "ClassTarget",
    "ImageExplanation",
    "explain_image",
    "grid_sheet",
    "picture_suffixes",
    "render_pictures",
]


def picture_suffixes(method: str) -> tuple[str, ...]:
    """The ``{kind}`` parts of the file names a method writes: ``("heatmap", "cam")`` for
    Grad-CAM, ``("heatmap++", "cam++")`` for Grad-CAM++, ``("gb",)`` for guided
    backpropagation, ``("cam_gb",)`` / ``("cam++_gb",)`` for guided Grad-CAM / ++, and
    ``("heatmap-{method}", "cam-{method}")`` for the others (``CAMMethod.suffix``)."""
    entry = get_method(method)
    if entry.guided:
        return (entry.suffix,)
    return (f"heatmap{entry.suffix}", f"cam{entry.suffix}")


class ClassTarget:
    """The engine's target: the given class, or the predicted one. It keeps the first
    forward's logits, so the prediction is known without another forward, and the class it
    chose, so the guided pass explains the same class."""

    def __init__(self, class_id: int | None):
        self.class_id = class_id
        self.logits: torch.Tensor | None = None
        self.ids: torch.Tensor | None = None

    def __call__(self, output: object) -> torch.Tensor:
        logits = logits_of(output)
        if self.ids is None:
            self.logits = logits.detach().float()
            if self.class_id is None:
                self.ids = logits.argmax(dim=1, keepdim=True)
            else:
                self.ids = torch.full((logits.shape[0], 1), self.class_id, device=logits.device)
        return logits.gather(1, self.ids.to(logits.device))


def render_pictures(
    view: torch.Tensor,
    result: CAMResult,
    methods: Sequence[str],
    colormap: str = "jet",
) -> dict[str, np.ndarray]:
    """``{kind: RGB picture}`` for image 0, target 0 of ``result``; ``view (3, H, W)`` in
    [0, 1] is the network's view of the image, on which overlays are drawn."""
    maps = {m: result.maps[m][0, 0] for m in methods if not get_method(m).guided}
    guided = {m: result.guided[m][0, 0] for m in methods if get_method(m).guided}
    return seed_pictures(view, maps, guided, picture_suffixes, colormap)


def grid_sheet(
    view: torch.Tensor, pictures: dict[str, np.ndarray], methods: Sequence[str], title: str
) -> np.ndarray:
    """The seed's table row: the input, then every picture, each captioned."""
    return seed_sheet(
        view, pictures, methods, picture_suffixes, {m: get_method(m).label for m in methods}, title
    )


@dataclass(frozen=True)
class ImageExplanation:
    """What :func:`explain_image` found.

    Attributes:
        pictures: ``{kind: RGB picture}`` (see the module's docstring).
        predicted: the predicted class id; ``probability``: its softmax probability.
        explained: the class explained (``class_id`` when given, else ``predicted``).
        faithfulness: ``{method or "random": {scalar: value}}`` for the metrics asked for
            (NaN where the map is flat: no positive evidence).
    """

    pictures: dict[str, np.ndarray]
    predicted: int
    probability: float
    explained: int
    faithfulness: dict[str, dict[str, float]] = field(default_factory=dict)


def explain_image(
    engine: CAMEngine,
    spec: NetworkSpec,
    image: np.ndarray,
    methods: Sequence[str],
    device: torch.device,
    class_id: int | None = None,
    colormap: str = "jet",
    faithfulness: Sequence[str] = (),
    grid: bool = False,
) -> ImageExplanation:
    """Explain ``image`` (``(H, W, 3)`` uint8 RGB) with ``engine`` over ``spec``'s network,
    for ``class_id`` (``None``: the predicted class), after ``spec.preprocess`` (the
    pictures are drawn on the network's view); ``faithfulness`` names metrics of
    :meth:`CAMEngine.faithfulness` to measure for the class explained."""
    view, x = spec.preprocess(image)
    target = ClassTarget(class_id)
    result = engine.explain(x[None].to(device), targets=target)
    probs = target.logits[0].softmax(dim=0)
    predicted = int(probs.argmax())
    explained = int(target.ids[0, 0])
    pictures = render_pictures(view, result, methods, colormap)
    measured: dict[str, dict[str, float]] = {}
    if faithfulness:
        scored = dataclasses.replace(result, class_ids=target.ids)  # the class explained
        found = engine.faithfulness(x[None].to(device), scored, faithfulness)
        measured = {
            name: {key: float(v[0]) for key, v in values.items()}
            for name, values in found.scores.items()
        }
    if grid:
        pictures["grid"] = grid_sheet(view, pictures, methods, spec.class_name(explained))
    return ImageExplanation(pictures, predicted, float(probs[predicted]), explained, measured)
