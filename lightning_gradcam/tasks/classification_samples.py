"""The classification task's samples: images (and labels, boxes, masks) pulled out of a batch,
kept as CPU copies."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Samples",
    "default_batch_parser",
    "fields_of_tuple",
    "make_samples",
    "to_samples",
]

IMAGE_KEYS = ("image", "images", "img", "x", "input", "inputs", "pixel_values")
LABEL_KEYS = ("label", "labels", "y", "target", "targets")
BOX_KEYS = ("box", "boxes")
MASK_KEYS = ("mask", "masks")


@dataclass
class Samples:
    """Fixed images and what is known about them, all on the CPU.

    ``images (N, C, H, W)`` float; ``labels (N,)`` long or None; ``boxes (N, 4)``
    ``(x0, y0, x1, y1)`` pixels or None; ``masks (N, H, W)`` bool or None.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int) -> Samples:
        return Samples(*(None if t is None else t[:n] for t in self.fields()))

    def slice(self, start: int, stop: int | None) -> Samples:
        return Samples(*(None if t is None else t[start:stop] for t in self.fields()))

    def fields(self) -> tuple[torch.Tensor | None, ...]:
        return (self.images, self.labels, self.boxes, self.masks)

    def to_state(self) -> dict[str, Any]:
        return dict(zip(("images", "labels", "boxes", "masks"), self.fields()))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Samples:
        return make_samples(**state)

    def digest(self) -> str:
        digest = hashlib.sha1(str(tuple(self.images.shape)).encode())
        digest.update(self.images.detach().cpu().contiguous().float().numpy().tobytes())
        return digest.hexdigest()

    @classmethod
    def concat(cls, parts: Sequence[Samples]) -> Samples:
        def cat(values):
            if any(v is None for v in values):
                return None
            return torch.cat(values)

        return cls(*(cat([p.fields()[i] for p in parts]) for i in range(4)))


def _first_key(batch: Mapping, keys: Sequence[str]):
    return next((batch[k] for k in keys if k in batch), None)


def default_batch_parser(batch: object) -> dict[str, torch.Tensor | None]:
    """Find the images (and labels, boxes, masks) in a batch.

    Accepted: an image tensor ``(B, C, H, W)``; a tuple/list ``(images, labels)``,
    ``(images, labels, boxes)`` or ``(images, labels, masks)`` (labels may be left out), each
    element told by its shape, any other element refused with a message naming
    ``batch_parser=`` (``fields_of_tuple``); a mapping with an
    image key (``image``, ``images``, ``img``, ``x``, ``input``, ``inputs``,
    ``pixel_values``), optionally a label key (``label``, ``labels``, ``y``, ``target``,
    ``targets``), ``boxes`` ``(B, 4)`` and ``masks`` ``(B, H, W)``.
    """
    if isinstance(batch, torch.Tensor):
        return {"images": batch}
    if isinstance(batch, Mapping):
        images = _first_key(batch, IMAGE_KEYS)
        if images is None:
            raise ValueError(
                f"cannot find images in a batch dict with keys {sorted(map(str, batch))}; "
                f"expected one of {IMAGE_KEYS}, or pass batch_parser=lambda b: (images, labels)"
            )
        return {
            "images": images,
            "labels": _first_key(batch, LABEL_KEYS),
            "boxes": _first_key(batch, BOX_KEYS),
            "masks": _first_key(batch, MASK_KEYS),
        }
    if isinstance(batch, Sequence) and batch and isinstance(batch[0], torch.Tensor):
        return fields_of_tuple(batch)
    raise ValueError(
        f"cannot find images in a batch of type {type(batch).__name__}; expected a tensor, an "
        "(images, labels) pair or a dict with an 'image' key, or pass "
        "batch_parser=lambda batch: (images, labels)"
    )


_TUPLE_HELP = (
    "a classification batch tuple is (images,), (images, labels), (images, boxes|masks) or "
    "(images, labels, boxes|masks): labels (B,) integer class ids, boxes (B, 4) (x0, y0, x1, "
    "y1) pixels, masks (B, H, W) at the image size; pass batch_parser=lambda batch: "
    '{"images": ..., "labels": ..., "boxes": ..., "masks": ...} for any other layout'
)


def _field_kind(value: object, images: torch.Tensor) -> str | None:
    """``labels``, ``boxes`` or ``masks``, told by shape (None: none of them). Boxes need a
    positive area in every row, so a one-hot ``(B, 4)`` target is never read as boxes."""
    if not isinstance(value, torch.Tensor) or images.dim() != 4:
        return None
    n, size = images.shape[0], tuple(images.shape[-2:])
    if value.dim() == 1 and len(value) == n and not value.is_floating_point():
        return "labels" if value.dtype != torch.bool else None
    if value.shape == (n, 4):
        boxes = value.detach().float()
        if bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()):
            return "boxes"
    if tuple(value.shape) in ((n, *size), (n, 1, *size)):
        return "masks"
    return None


def fields_of_tuple(batch: Sequence) -> dict[str, torch.Tensor | None]:
    """The fields of a batch tuple ``(images, ...)`` (``_TUPLE_HELP``), every element used or
    the batch refused: nothing the user gave is dropped in silence."""
    images = batch[0]
    fields: dict[str, torch.Tensor | None] = {
        "images": images,
        "labels": None,
        "boxes": None,
        "masks": None,
    }
    if len(batch) > 3:
        raise ValueError(
            f"a batch tuple of {len(batch)} elements is more than it reads; {_TUPLE_HELP}"
        )
    order = ("labels", "boxes", "masks")
    last = -1
    for position, value in enumerate(batch[1:], start=1):
        kind = _field_kind(value, images) if isinstance(images, torch.Tensor) else None
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        if kind is None:
            raise ValueError(
                f"element {position} of the batch tuple ({shape}) is neither labels, boxes nor "
                f"masks of the {len(images)} images; {_TUPLE_HELP}"
            )
        if fields[kind] is not None or order.index(kind) < last or (kind != "labels" and last > 0):
            raise ValueError(
                f"element {position} of the batch tuple ({shape}) reads as {kind} after "
                f"{', '.join(k for k in order if fields[k] is not None)}; {_TUPLE_HELP}"
            )
        fields[kind] = value
        last = order.index(kind)
    return fields


def _cpu(t: object) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    # A clone made outside inference mode is an ordinary tensor, usable with autograd later.
    with torch.inference_mode(False):
        return t.detach().to("cpu").clone()


def to_samples(parsed: object) -> Samples:
    """Normalise what a batch parser returned into CPU ``Samples`` (validated)."""
    if isinstance(parsed, Samples):
        parts = dict(zip(("images", "labels", "boxes", "masks"), parsed.fields()))
    elif isinstance(parsed, Mapping):
        parts = {k: parsed.get(k) for k in ("images", "labels", "boxes", "masks")}
    elif isinstance(parsed, torch.Tensor):
        parts = {"images": parsed}
    elif isinstance(parsed, Sequence) and parsed and isinstance(parsed[0], torch.Tensor):
        parts = fields_of_tuple(parsed)
    else:
        raise TypeError(
            f"a batch parser must return images, (images, labels), (images, labels, "
            f"boxes|masks) or a dict with 'images', got {type(parsed).__name__}"
        )
    return make_samples(**parts)


def _image_dtype(images: torch.Tensor) -> bool:
    return images.is_floating_point() or images.dtype == torch.uint8


def make_samples(images, labels=None, boxes=None, masks=None) -> Samples:
    """Validated CPU ``Samples`` from user-given or batch-taken tensors."""
    images = _cpu(images)
    if images is None or images.dim() != 4 or not _image_dtype(images):
        shape = None if images is None else (tuple(images.shape), images.dtype)
        raise ValueError(
            "images must be a floating-point (N, C, H, W) tensor, or uint8 for a model whose "
            f"forward converts them itself (pictures then read 0-255), got {shape}"
        )
    n = images.shape[0]
    labels = _cpu(labels)
    if labels is not None:
        if labels.dim() != 1 or labels.shape[0] != n or labels.is_floating_point():
            raise ValueError(
                f"labels must be {n} integer class ids (shape ({n},)), got "
                f"{tuple(labels.shape)} {labels.dtype}"
            )
        labels = labels.long()
    boxes = _cpu(boxes)
    if boxes is not None:
        if boxes.shape != (n, 4):
            raise ValueError(
                f"boxes must be ({n}, 4) as (x0, y0, x1, y1) pixels, one per image, got "
                f"{tuple(boxes.shape)}"
            )
        boxes = boxes.float()
    masks = _cpu(masks)
    if masks is not None:
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.shape != (n, *images.shape[-2:]):
            raise ValueError(
                f"masks must be ({n}, {images.shape[-2]}, {images.shape[-1]}), one per image at "
                f"the image size, got {tuple(masks.shape)}"
            )
        masks = masks.bool()
    return Samples(images=images, labels=labels, boxes=boxes, masks=masks)
