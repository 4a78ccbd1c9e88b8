"""Attention metrics over the whole validation epoch, by sums (issue 28; first increment).

Each rank explains its own validation batches and adds, per method, the sums below to a
:class:`MetricSums`; at epoch end one collective (``all_reduce`` of one float64 tensor) gives
the global sums, and the means are ``energy_in_box = energy_sum / counted``,
``pointing_game = hits / counted``, ``no_evidence_rate = no_evidence / images``, the same
formulas as ``core.tracking.DriftTracker`` on the fixed samples (maps without positive
evidence are left out of energy and pointing, not counted as 0).

Not yet wired into ``GradCAMCallback`` (``metrics_on="validation"``): see the branch report.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.drift import box_masks, energy_share, pointing_hits
from ..core.tracking import has_evidence
from ..engine import CAMEngine

__all__ = ["FIELDS", "MetricSums", "measure_classification"]

FIELDS = ("energy_sum", "hits", "counted", "no_evidence", "images")


class MetricSums:
    """Per-method sums; ``means()`` gives every declared scalar at every pass (``nan`` when
    a pass had nothing to count), so the keys are stable.

    Example::

        sums = MetricSums(("gradcam",))
        sums.add(measure_classification(model, images, labels, boxes=boxes))
        sums.reduce()           # one all_reduce when torch.distributed is initialised
        sums.means()            # {"gradcam/energy_in_box": ..., ...}
    """

    def __init__(self, methods: Sequence[str]):
        self.methods = tuple(methods)
        self.sums = torch.zeros(len(self.methods), len(FIELDS), dtype=torch.float64)

    def add(self, part: dict[str, dict[str, float]]) -> None:
        for i, method in enumerate(self.methods):
            for j, name in enumerate(FIELDS):
                self.sums[i, j] += float(part[method][name])

    def reduce(self) -> None:
        """Sum over ranks: one collective, on every rank (a no-op in one process)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend = dist.get_backend()
            device = (
                torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
            )
            flat = self.sums.to(device)
            dist.all_reduce(flat)
            self.sums = flat.cpu()

    def means(self) -> dict[str, float]:
        out: dict[str, float] = {}
        nan = float("nan")
        for i, method in enumerate(self.methods):
            s = dict(zip(FIELDS, self.sums[i].tolist()))
            out[f"{method}/energy_in_box"] = s["energy_sum"] / s["counted"] if s["counted"] else nan
            out[f"{method}/pointing_game"] = s["hits"] / s["counted"] if s["counted"] else nan
            out[f"{method}/no_evidence_rate"] = (
                s["no_evidence"] / s["images"] if s["images"] else nan
            )
        return out


def measure_classification(
    network: torch.nn.Module,
    images: torch.Tensor,
    targets: object,
    boxes: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    layer: str | None = None,
    methods: Sequence[str] = ("gradcam",),
) -> dict[str, dict[str, float]]:
    """The sums of one batch, per method: images ``(B, C, H, W)``, the class explained per
    image (``targets`` as ``CAMEngine.explain`` takes them), ``boxes (B, 4)`` or ``masks
    (B, H, W)`` the evidence region. The engine enables gradients itself."""
    result = CAMEngine(network, layer=layer, methods=tuple(methods)).explain(
        images, targets=targets
    )
    size = tuple(images.shape[-2:])
    region = masks.bool().cpu() if masks is not None else box_masks(boxes.cpu(), size)
    part: dict[str, dict[str, float]] = {}
    for method in methods:
        maps = result.maps[method][:, 0].float().cpu()
        layer_maps = result.layer_maps.get(method)
        evidence = has_evidence(layer_maps[:, 0] if layer_maps is not None else maps)
        energy = energy_share(maps, region)
        hits = pointing_hits(maps, region).float()
        part[method] = {
            "energy_sum": float(energy[evidence].sum()),
            "hits": float(hits[evidence].sum()),
            "counted": float(evidence.sum()),
            "no_evidence": float((~evidence).sum()),
            "images": float(len(maps)),
        }
    return part
