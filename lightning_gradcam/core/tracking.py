"""How maps move across passes: the first and previous maps per key, drift against both,
energy in the box, and matching of detections between passes.

Framework-free (torch and torchvision only). The Lightning callback tracks one key per method
(the same samples, in the same order, at every pass); the detectron2 hook one key per image
and method, whose detections change from pass to pass and are matched by class and box.

Per update of key ``k`` with maps ``m`` ``(N, H, W)``:

- ``drift_vs_prev`` / ``drift_vs_first``: mean over pairs ``(i, j)`` of
  ``core.drift.map_drift(m_i, ref_j)``, the pairs being ``(i, i)`` for samples, or the
  detections matched (same class, IoU >= ``match_iou``, greedy from the highest score, each
  earlier detection used once) for detections; no pair, no value.
- ``energy_in_box``: mean over maps of ``core.drift.energy_share`` in the map's box or mask.
- ``pointing_game``: share of the maps whose maximum lies in the map's box or mask
  (``core.drift.pointing_hits``).
- ``no_evidence_rate``: share of all maps without positive evidence (given with the two above,
  when regions are known); the maps left out of them.

``last_per_image`` holds, after each update, ``energy_in_box`` and ``pointing_game`` per map
(``None`` for a map left out), so a caller can name the images behind a low mean.

With ``leave_out_empty=True``, a map with no positive evidence (zero everywhere after the
ReLU: Grad-CAM's signal can vanish, e.g. when a probability saturates) is left out of both
means rather than counted as a drift of 1 and an energy of 0; a mean over nothing is not
given. ``update(..., evidence=...)`` says explicitly which maps have evidence.

With ``always_defined=True`` (what the callback's tasks and the detectron2 hook use, so that
a monitored scalar is there at every pass from the first) every scalar is given at every
update that has regions: a map with no positive evidence puts **0** energy in its region and
does not point inside it (``no_evidence_rate`` says how many such maps there were). Drift
needs two passes: it is given from the second update with a pair to compare.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import box_iou

from .drift import box_masks, energy_share, map_drift, pointing_hits

__all__ = ["DriftTracker", "TrackedMaps", "match_detections", "has_evidence"]


def has_evidence(maps: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: which of the ``(N, H, W)`` maps have any positive value."""
    return torch.nan_to_num(maps.detach().float(), nan=0.0).flatten(1).amax(dim=1) > 0


@dataclass
class TrackedMaps:
    """One pass's maps for one key: ``maps`` ``(N, H, W)``; for detections their ``boxes``
    ``(N, 4)`` and ``classes`` ``(N,)``; ``evidence`` ``(N,)`` bool."""

    maps: torch.Tensor
    boxes: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    evidence: torch.Tensor | None = None


def match_detections(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    ref_boxes: torch.Tensor,
    ref_classes: torch.Tensor,
    min_iou: float = 0.5,
) -> list[tuple[int, int]]:
    """Greedy pairs ``(current, reference)``: same class, IoU >= ``min_iou``; current
    detections in their order (highest score first), each reference used at most once."""
    if not len(boxes) or not len(ref_boxes):
        return []
    iou = box_iou(boxes.float().cpu(), ref_boxes.float().cpu())
    same = classes.cpu()[:, None] == ref_classes.cpu()[None, :]
    overlap = torch.where(same, iou, torch.full_like(iou, -1.0))
    pairs: list[tuple[int, int]] = []
    for i in range(len(boxes)):
        row = overlap[i]
        best = int(row.argmax())
        if float(row[best]) >= min_iou:
            pairs.append((i, best))
            overlap[:, best] = -1.0
    return pairs


class DriftTracker:
    """First and previous maps per key; drift and energy at each update (module docstring).

    Args:
        match_iou: box overlap for matching detections across passes.
        leave_out_empty: leave maps without positive evidence out of drift and energy.
        always_defined: give the region scalars at every update: a map without evidence
            scores 0 energy and no hit (module docstring).
    """

    def __init__(
        self, match_iou: float = 0.5, leave_out_empty: bool = False, always_defined: bool = False
    ):
        if not 0.0 < match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
        self.match_iou = float(match_iou)
        self.leave_out_empty = bool(leave_out_empty)
        self.always_defined = bool(always_defined)
        self.first: dict[Hashable, TrackedMaps] = {}
        self.previous: dict[Hashable, TrackedMaps] = {}
        self.last_per_image: dict[str, list[float | None]] = {}

    def update(
        self,
        key: Hashable,
        maps: torch.Tensor,
        *,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        classes: torch.Tensor | None = None,
        evidence: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Scalars for ``maps`` ``(N, H, W)`` against this key's previous and first maps,
        then remember them. ``boxes`` ``(N, 4)`` or ``masks`` ``(N, H, W)``: the regions of
        ``energy_in_box``; ``classes`` ``(N,)``: the maps are detections, matched across
        passes by class and ``boxes`` (else maps pair by index); ``evidence`` ``(N,)`` bool:
        which maps have positive evidence (default: computed, see ``has_evidence``)."""
        maps = maps.detach().float().cpu()
        if maps.dim() != 3:
            raise ValueError(f"maps must be (N, H, W), got shape {tuple(maps.shape)}")
        if not len(maps) and self.always_defined:
            return self.nothing_explained(regions=boxes is not None or masks is not None)
        if classes is not None and boxes is None:
            raise ValueError("detections (classes given) need their boxes for matching")
        if evidence is None:
            evidence = has_evidence(maps)
        current = TrackedMaps(
            maps,
            None if boxes is None else boxes.detach().float().cpu(),
            None if classes is None else torch.as_tensor(classes).cpu(),
            torch.as_tensor(evidence, dtype=torch.bool).cpu(),
        )
        values: dict[str, float] = {}
        for name, reference in (("prev", self.previous.get(key)), ("first", self.first.get(key))):
            drift = self._drift(current, reference)
            if drift is not None:
                values[f"drift_vs_{name}"] = drift
        values |= self._localisation(current, masks)
        self.previous[key] = current
        self.first.setdefault(key, current)
        return values

    def nothing_explained(self, regions: bool = True) -> dict[str, float]:
        """The scalars of an update with no map at all (no detection in an image), as
        ``always_defined`` gives them: no evidence, nothing in a region. The
        references stay those of the last update that had maps."""
        self.last_per_image = {"energy_in_box": [], "pointing_game": []} if regions else {}
        values: dict[str, float] = {}
        if regions:
            values |= {"energy_in_box": 0.0, "pointing_game": 0.0, "no_evidence_rate": 1.0}
        return values

    def _pairs(self, current: TrackedMaps, reference: TrackedMaps) -> list[tuple[int, int]]:
        if current.classes is not None and reference.classes is not None:
            return match_detections(
                current.boxes, current.classes, reference.boxes, reference.classes, self.match_iou
            )
        if current.maps.shape != reference.maps.shape:
            raise ValueError(
                f"maps {tuple(current.maps.shape)} cannot be compared with the earlier "
                f"{tuple(reference.maps.shape)}: the same samples must be tracked at each pass"
            )
        return [(i, i) for i in range(len(current.maps))]

    def _counted(self, tracked: TrackedMaps, index: int) -> bool:
        return not self.leave_out_empty or bool(tracked.evidence[index])

    def _drift(self, current: TrackedMaps, reference: TrackedMaps | None) -> float | None:
        if reference is None:
            return None
        pairs = [
            (i, j)
            for i, j in self._pairs(current, reference)
            if self._counted(current, i) and self._counted(reference, j)
        ]
        if not pairs:
            return None
        now = current.maps[[i for i, _ in pairs]]
        before = reference.maps[[j for _, j in pairs]]
        return float(map_drift(now, before).mean())

    def _localisation(self, current: TrackedMaps, masks: torch.Tensor | None) -> dict[str, float]:
        """``energy_in_box``, ``pointing_game``, ``no_evidence_rate`` (module docstring)."""
        self.last_per_image = {}
        if masks is None and current.boxes is None:
            return {}
        if masks is None:
            masks = box_masks(current.boxes, tuple(current.maps.shape[-2:]))
        masks = torch.as_tensor(masks).cpu()
        counted = [self._counted(current, i) for i in range(len(current.maps))]
        energy = energy_share(current.maps, masks).tolist()
        hits = pointing_hits(current.maps, masks).float().tolist()
        if self.always_defined:  # no evidence: nothing in the region, no hit
            empty = [not bool(e) for e in current.evidence]
            energy = [0.0 if z else e for e, z in zip(energy, empty)]
            hits = [0.0 if z else h for h, z in zip(hits, empty)]
            counted = [True] * len(counted)
        self.last_per_image = {
            "energy_in_box": [e if c else None for e, c in zip(energy, counted)],
            "pointing_game": [h if c else None for h, c in zip(hits, counted)],
        }
        values = {"no_evidence_rate": float((~current.evidence).float().mean())}
        if any(counted):
            for name, per_image in self.last_per_image.items():
                kept = [v for v in per_image if v is not None]
                values[name] = float(sum(kept) / len(kept))
        return values

    # ------------------------------------------------------------------ saved state

    def state_dict(self) -> dict[str, Any]:
        """``first_maps`` / ``prev_maps`` ``{key: (N, H, W)}``, and for keys with boxes or
        classes ``first_boxes``, ``prev_boxes``, ``first_classes``, ``prev_classes``."""
        state: dict[str, Any] = {}
        for name, store in (("first", self.first), ("prev", self.previous)):
            state[f"{name}_maps"] = {k: t.maps for k, t in store.items()}
            state[f"{name}_boxes"] = {k: t.boxes for k, t in store.items() if t.boxes is not None}
            state[f"{name}_classes"] = {
                k: t.classes for k, t in store.items() if t.classes is not None
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` gave (``*_boxes``/``*_classes`` may be absent)."""
        for name, store in (("first", self.first), ("prev", self.previous)):
            store.clear()
            boxes = state.get(f"{name}_boxes") or {}
            classes = state.get(f"{name}_classes") or {}
            for key, maps in (state.get(f"{name}_maps") or {}).items():
                maps = maps.detach().float().cpu()
                store[key] = TrackedMaps(maps, boxes.get(key), classes.get(key), has_evidence(maps))
