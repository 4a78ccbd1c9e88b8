"""``GradCAMHook(metrics_loader=...)``: the hook's scalars over every image of a data loader
(e.g. ``build_detection_test_loader``), sharded across the ranks of detectron2's ``launch``.

Each rank explains the batches its own loader gives (the first ``metrics_batches`` when
set), up to ``max_detections`` detections per image, and adds per method: detections, the
energy share of each detection's map in its own box, pointing hits, maps without positive
evidence. One ``all_reduce`` (``lightning_gradcam.core.population``) joins the ranks; then,
over all detections ``n`` of all images (the hook's per-image rules, pooled)::

    energy_in_box = sum share / n     pointing_game = sum hit / n     (no evidence: 0)
    no_evidence_rate = #(maps without evidence) / n          (1 when n = 0)
    detections_per_image = n / images
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lightning_gradcam.core.drift import box_masks, energy_share, pointing_hits
from lightning_gradcam.core.layers import expand_layer_names
from lightning_gradcam.core.population import MetricSums
from lightning_gradcam.core.state import preserve_rng

from .explain import DETECTOR_LAYER_HINT, DetectionCAM

__all__ = ["LoaderMetrics"]

_FIELDS = ("energy_sum", "hits", "maps", "no_evidence", "images")


class LoaderMetrics:
    """Whole-loader sums for one hook on one rank (module docstring)."""

    def __init__(
        self, loader: Iterable[Sequence[dict]], methods: Sequence[str], max_batches: int | None
    ):
        if max_batches is not None and (
            isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
        ):
            raise ValueError(
                f"metrics_batches must be a positive integer or None, got {max_batches!r}"
            )
        if not hasattr(loader, "__iter__"):
            raise ValueError(
                "metrics_loader must be an iterable of batches (lists of detectron2 dicts "
                "with 'image'), e.g. build_detection_test_loader(cfg, 'my_val')"
            )
        self.loader = loader
        self.methods = tuple(methods)
        self.max_batches = max_batches
        self.images = 0
        self.cam: Any = None

    @classmethod
    def optional(
        cls, loader: Any, methods: Sequence[str], max_batches: int | None
    ) -> LoaderMetrics | None:
        """The hook's ``metrics_loader``/``metrics_batches``: None without a loader."""
        if loader is None:
            if max_batches is not None:
                raise ValueError("metrics_batches limits metrics_loader=...; pass that loader too")
            return None
        return cls(loader, methods, max_batches)

    def start(self, model: Any, layer: Sequence[str] | None, score: str) -> None:
        """The explainer of ``model`` (unwrapped) at the hook's layers, on this rank."""
        layers = None if layer is None else expand_layer_names(model, layer, DETECTOR_LAYER_HINT)
        self.cam = DetectionCAM(model, layer=layers, methods=self.methods, score=score)

    @staticmethod
    def put(storage: Any, prefix: str, means: dict[str, float] | None) -> None:
        """The means into detectron2's ``EventStorage`` under ``prefix/``."""
        for name, value in (means or {}).items():
            storage.put_scalar(f"{prefix}/{name}", value, smoothing_hint=False)

    def measure(self, max_detections: int) -> dict[str, float]:
        """Explain every batch on this rank, one ``all_reduce``, the means (every rank)."""
        cam = self.cam
        sums = MetricSums(self.methods, _FIELDS)
        layer = cam.layers[0]
        with preserve_rng():
            for index, batch in enumerate(self.loader):
                if self.max_batches is not None and index >= self.max_batches:
                    break
                inputs = [{k: v for k, v in d.items() if k != "instances"} for d in batch]
                results = cam.explain(inputs, max_detections=max_detections)
                sums.add(self.methods[0], {"images": len(inputs)})
                for detections in results:
                    for det in detections:
                        for method in self.methods:
                            sums.add(method, self._one(det, layer, method))
        sums.reduce()
        out: dict[str, float] = {}
        self.images = int(sums.totals(self.methods[0])["images"])
        for method in self.methods:
            s = sums.totals(method)
            n = s["maps"]
            out[f"{method}/energy_in_box"] = s["energy_sum"] / n if n else 0.0
            out[f"{method}/pointing_game"] = s["hits"] / n if n else 0.0
            out[f"{method}/no_evidence_rate"] = s["no_evidence"] / n if n else 1.0
        out["detections_per_image"] = sums.totals(self.methods[0])["maps"] / max(1, self.images)
        return out

    @staticmethod
    def _one(det: Any, layer: str, method: str) -> dict[str, float]:
        if not det.evidence_by_layer[layer][method]:
            return {"maps": 1.0, "no_evidence": 1.0}
        cam = det.maps_by_layer[layer][method].detach().float().cpu()[None]
        region = box_masks(torch.as_tensor(det.box).float()[None], tuple(cam.shape[-2:]))
        return {
            "maps": 1.0,
            "energy_sum": float(energy_share(cam, region)[0]),
            "hits": float(pointing_hits(cam, region)[0]),
        }
