"""SegmentationTask: what ``GradCAMCallback`` does with a semantic segmenter.

Batches are ``(images, masks)``: ``images (B, C, H, W)`` float and ``masks (B, H, W)``
integer class ids at the image size (or a dict with ``image``/``images``... and ``mask``/
``masks`` keys). For each fixed image and each class present in its ground truth (but the
background, class 0 by default) one map explains the class's Seg-Grad-CAM target (the sum of
its logits over the pixels predicted as it; ``segmentation.SegmentationCAM``).

Logged per pass, relative to ``<prefix>/<layer>``:

- ``<method>/image_NN_class_KK``: the map over image NN with class KK's mask outlined;
  ``<method>/grid``: all of them;
- ``<method>/energy_in_mask``: mean over (image, class) of the share of the class's map
  inside the class's ground-truth mask; ``<method>/pointing_game``: share of maps whose peak
  lies in the mask; ``<method>/no_evidence_rate``: share of maps without positive evidence
  (a class the model does not predict has none), each counting 0 in the other two, so all
  three are logged at every pass;
  ``<method>/drift_vs_prev``, ``<method>/drift_vs_first``: how the maps moved;
- the same per class under ``<method>/class_KK/...``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.render import to_uint8_image
from ..core.tap import ForwardTap, Tapped
from ..core.tracking import DriftTracker
from ..pictures import class_text
from ..segmentation.explain import Region, SegmentationCAM, SegmentationMaps
from ..segmentation.outputs import looks_like_segmentation
from ..segmentation.pictures import outline_mask
from .base import CAMTask, PassReport, ReportItem, TaskOptions, probe_output
from .classification_samples import IMAGE_KEYS, MASK_KEYS
from .options import check_auto_target

__all__ = ["SegmentationSamples", "SegmentationTask"]

# DriftTracker's name for the share of a map inside its region; here the region is a mask.
_RENAMED = {"energy_in_box": "energy_in_mask"}


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(False):  # an ordinary tensor, usable with autograd later
        return tensor.detach().to("cpu").clone()


@dataclass
class SegmentationSamples:
    """Fixed images ``(N, C, H, W)`` float and their masks ``(N, H, W)`` long class ids."""

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int) -> SegmentationSamples:
        return SegmentationSamples(self.images[:n], self.masks[:n])

    def slice(self, start: int, stop: int | None) -> SegmentationSamples:
        return SegmentationSamples(self.images[start:stop], self.masks[start:stop])

    @classmethod
    def concat(cls, parts: Sequence[SegmentationSamples]) -> SegmentationSamples:
        return cls(torch.cat([p.images for p in parts]), torch.cat([p.masks for p in parts]))

    def to_state(self) -> dict[str, Any]:
        return {"images": self.images, "masks": self.masks}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SegmentationSamples:
        return cls(state["images"].float(), state["masks"].long())

    def digest(self) -> str:
        digest = hashlib.sha1(str(tuple(self.images.shape)).encode())
        digest.update(self.images.detach().cpu().contiguous().float().numpy().tobytes())
        return digest.hexdigest()

    def classes(self, background: int | None) -> list[list[int]]:
        """The ground-truth classes of each image, ascending, ``background`` left out."""
        return [[c for c in torch.unique(mask).tolist() if c != background] for mask in self.masks]


def _pair(batch: Any) -> tuple[Any, Any]:
    """``(images, masks)`` of a batch, either possibly None."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        images = next((batch[k] for k in IMAGE_KEYS if k in batch), None)
        return images, next((batch[k] for k in MASK_KEYS if k in batch), None)
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], batch[1] if len(batch) > 1 else None
    return None, None


def _is_class_mask(masks: Any, images: Any) -> bool:
    return (
        isinstance(masks, torch.Tensor)
        and isinstance(images, torch.Tensor)
        and images.dim() == 4
        and masks.dim() == 3
        and not masks.is_floating_point()
        and masks.dtype != torch.bool
        and tuple(masks.shape) == (images.shape[0], *images.shape[-2:])
    )


class SegmentationTask(CAMTask):
    """Per fixed image and ground-truth class: the class's map, with the mask outlined, and
    how much of it falls in the mask (module docstring).

    Args:
        options: the callback's arguments; ``target`` must be ``"auto"``.
        background: the class id left out of the ground-truth classes (``None``: none).
    """

    name: ClassVar[str] = "segmentation"
    samples_class: ClassVar[type] = SegmentationSamples
    # Grad-CAM++'s closed form assumes the exponential of one logit, not a class's sum over
    # a region: its weights lose the class. HiResCAM keeps the gradient per position.
    default_methods: ClassVar[tuple[str, ...]] = ("gradcam", "hirescam")

    def __init__(self, options: TaskOptions, background: int | None = 0):
        super().__init__(options)
        self.background = background
        self._cam: SegmentationCAM | None = None
        self._network: nn.Module | None = None
        self._tracker = DriftTracker(leave_out_empty=True, always_defined=True)
        self._class_tracker = DriftTracker(leave_out_empty=True, always_defined=True)
        if "gradcam++" in options.methods:
            # Asked for by name; for a class's sum of logits over many pixels its weights
            # lose the class (docs/segmentation.md): say so.
            warnings.warn(
                "GradCAMCallback: Grad-CAM++ on a segmenter weights every channel with a "
                "positive gradient alike (its closed form assumes the exponential of one "
                "logit, not a sum over a region), so its maps say little about the class; "
                "pass methods=('gradcam', 'hirescam') for segmentation",
                UserWarning,
                stacklevel=2,
            )

    # ---------------------------------------------------------------- recognition

    @classmethod
    def recognises(cls, network: nn.Module, batch: Any) -> bool:
        """``(images, masks)`` with integer ``(B, H, W)`` masks at the image size, or images
        on which the network returns segmentation logits ``(B, K, h, w)``."""
        images, masks = _pair(batch)
        if _is_class_mask(masks, images):
            return True
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            return False
        if not images.is_floating_point():
            return False
        try:
            output = probe_output(network, images[:1])
        except Exception:  # a module that does not take images: not for this task to say
            return False
        return looks_like_segmentation(output)

    # ---------------------------------------------------------------- samples

    def parse_batch(self, batch: Any) -> SegmentationSamples:
        if self.options.batch_parser is not None:
            batch = self.options.batch_parser(batch)
        images, masks = _pair(batch)
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(
                "segmentation batches must be (images, masks): images (B, C, H, W) and masks "
                f"(B, H, W) of class ids; got a batch of {type(batch).__name__}"
                + (
                    f" whose images have shape {tuple(images.shape)}"
                    if isinstance(images, torch.Tensor)
                    else ""
                )
                + "; pass batch_parser=lambda batch: (images, masks) for another layout"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point, got {images.dtype}")
        if not isinstance(masks, torch.Tensor):
            raise ValueError(
                "segmentation batches must be (images, masks) with masks (B, H, W) of class "
                f"ids; the batch holds no masks (second element: {type(masks).__name__}); "
                "pass batch_parser=lambda batch: (images, masks)"
            )
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        expected = (images.shape[0], *images.shape[-2:])
        if tuple(masks.shape) != expected:
            raise ValueError(
                f"masks must be {expected}: one class id per pixel of each image, at the "
                f"image size; got {tuple(masks.shape)}"
            )
        if masks.is_floating_point() or masks.dtype == torch.bool:
            raise ValueError(
                f"masks must hold integer class ids, got {masks.dtype}; a boolean mask of the "
                "deciding object is for classification (pass the class ids, e.g. mask.long())"
            )
        return SegmentationSamples(_cpu(images).float(), _cpu(masks).long())

    @classmethod
    def check_target(cls, target: object) -> str:
        return check_auto_target(
            target,
            cls.name,
            "a segmentation pass explains every class of each image's ground truth, with "
            "Seg-Grad-CAM's target",
        )

    def check_samples(self, samples: SegmentationSamples) -> None:
        if samples.masks.min() < 0:
            raise ValueError("masks hold negative class ids; an ignore label must be mapped first")
        if not any(samples.classes(self.background)):
            raise ValueError(
                f"no fixed image has a ground-truth class other than the background "
                f"({self.background}): there is nothing to explain; choose other images"
            )

    # ---------------------------------------------------------------- the pass

    def _engine(self, network: nn.Module) -> SegmentationCAM:
        if self._cam is None or self._network is not network:
            layer = self.layer_name or self.options.layer
            self._cam = SegmentationCAM(
                network, layer=layer, methods=self.options.methods, reshape=self.options.reshape
            )
            self._network = network
        return self._cam

    def explain(self, network: nn.Module, samples: SegmentationSamples) -> list[list[Region]]:
        """One list of regions per sample, one region per ground-truth class."""
        return self.explain_maps(network, samples).regions()

    def explain_maps(self, network: nn.Module, samples: SegmentationSamples) -> SegmentationMaps:
        """:meth:`explain` as batched tensors (``SegmentationCAM.explain_maps``)."""
        cam = self._engine(network)
        images = samples.images
        param = next(network.parameters(), None)
        if param is not None:
            images = images.to(param.device)
        maps = cam.explain_maps(images, classes=samples.classes(self.background), background=None)
        self.layer_name = cam.layer
        return maps

    def tap(
        self, network: nn.Module, samples: SegmentationSamples, observe_only: bool = False
    ) -> ForwardTap | None:
        """A ``core.tap.ForwardTap`` for the caller's own forward of ``samples``' images,
        taking the gradients of each image's ground-truth classes (``SegmentationCAM.tap``);
        None while the layer is not known."""
        classes = samples.classes(self.background)
        return self._engine(network).tap(samples.images, classes, observe_only=observe_only)

    def explain_tapped(
        self, network: nn.Module, samples: SegmentationSamples, tapped: Tapped
    ) -> SegmentationMaps:
        """:meth:`explain_maps` from what a :meth:`tap` took from the caller's forward."""
        cam = self._engine(network)
        maps = cam.explain_tapped(samples.images, tapped)
        self.layer_name = cam.layer
        return maps

    def _pairs(self, samples: SegmentationSamples) -> list[tuple[int, int]]:
        return [
            (index, class_id)
            for index, classes in enumerate(samples.classes(self.background))
            for class_id in classes
        ]

    def _text(self, class_id: int) -> str:
        return class_text(class_id, self.options.class_names)

    def report_items(
        self, result: list[list[Region]], samples: SegmentationSamples
    ) -> list[ReportItem]:
        """One item per (image, ground-truth class): the class's map with its mask outlined;
        a class the model does not predict anywhere has no map ("not predicted")."""
        pairs = self._pairs(samples)
        regions = [region for row in result for region in row]
        if len(regions) != len(pairs) or any(r.class_id != c for r, (_, c) in zip(regions, pairs)):
            raise ValueError("the result does not match the samples' ground-truth classes")
        options = self.options
        pictures = [to_uint8_image(image, options.mean, options.std) for image in samples.images]
        items = []
        for (index, class_id), region in zip(pairs, regions):
            predicted = region.pixels > 0
            text = self._text(class_id)
            items.append(
                ReportItem(
                    tag=f"image_{index:02d}_class_{class_id:02d}",
                    picture=pictures[index],
                    text=f"{text} {region.target_score + 0.0:.2f}" if predicted else text,
                    maps=dict(region.maps) if predicted else {},
                    evidence=dict(region.evidence),
                    reason="not predicted",
                    marks=partial(outline_mask, mask=samples.masks[index] == class_id),
                    first_text=text,
                    data=(index, class_id, region),
                )
            )
        return items

    def measure(
        self,
        method: str,
        items: list[ReportItem],
        samples: SegmentationSamples,
        report: PassReport,
    ) -> dict[str, float]:
        pairs = [(index, class_id) for index, class_id, _ in (item.data for item in items)]
        regions = [region for _, _, region in (item.data for item in items)]
        maps = torch.stack([r.maps[method].detach().float().cpu() for r in regions])
        evidence = torch.tensor([r.evidence[method] for r in regions], dtype=torch.bool)
        masks = torch.stack([samples.masks[i] == c for i, c in pairs])
        values = self._renamed(self._tracker.update(method, maps, masks=masks, evidence=evidence))
        report.per_image.update(self._per_image(method, pairs, len(samples)))
        for class_id in sorted({c for _, c in pairs}):
            rows = [j for j, (_, c) in enumerate(pairs) if c == class_id]
            per_class = self._class_tracker.update(
                (method, class_id), maps[rows], masks=masks[rows], evidence=evidence[rows]
            )
            report.scalars.update(
                {
                    f"{method}/class_{class_id:02d}/{k}": v
                    for k, v in self._renamed(per_class).items()
                }
            )
        return values

    @staticmethod
    def _renamed(values: dict[str, float]) -> dict[str, float]:
        return {_RENAMED.get(k, k): v for k, v in values.items()}

    def _per_image(
        self, method: str, pairs: list[tuple[int, int]], count: int
    ) -> dict[str, list[float | None]]:
        """Each image's mean over its classes of the tracker's last per-map values."""
        out: dict[str, list[float | None]] = {}
        for name, values in self._tracker.last_per_image.items():
            per_image: list[float | None] = []
            for index in range(count):
                kept = [v for (i, _), v in zip(pairs, values) if i == index and v is not None]
                per_image.append(sum(kept) / len(kept) if kept else None)
            out[f"{method}/{_RENAMED.get(name, name)}"] = per_image
        return out

    def monitored_scalars(self, samples: SegmentationSamples) -> tuple[str, ...]:
        names = ("energy_in_mask", "pointing_game", "no_evidence_rate")
        classes = sorted({c for _, c in self._pairs(samples)})
        tags = []
        for method in self.options.methods:
            tags += [f"{method}/{name}" for name in names]
            tags += [f"{method}/class_{c:02d}/{name}" for c in classes for name in names]
        return tuple(tags)

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        # The callback keeps the layer's name itself (its "layer" key).
        return {
            "drift": self._tracker.state_dict(),
            "class_drift": self._class_tracker.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._tracker.load_state_dict(state.get("drift") or {})
        self._class_tracker.load_state_dict(state.get("class_drift") or {})
