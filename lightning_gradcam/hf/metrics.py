"""The callback's scalars as a ``Trainer`` evaluation's metrics: the same keys at every
evaluation, and the same values on every rank.

The ``Trainer`` reads ``metric_for_best_model`` with ``metrics[key]`` and raises ``KeyError``
when the key is missing, so a scalar that is there at one evaluation and not at the next
would end the run. Every key is therefore given at every evaluation once it is known:

- the scalars of the pass (``energy_in_box``, ``pointing_game``, ``no_evidence_rate``, ...:
  defined at every pass, a map without evidence counting 0; see ``core.tracking``);
- ``drift_vs_prev`` / ``drift_vs_first`` for every tracked group (a method, a segmentation
  class), which have no value before a second pass, or when no map of a pair has evidence;
- ``skipped_passes``: how many passes failed so far (0 until one does).

A value that cannot be measured is ``NaN``: the ``Trainer``'s ``np.greater`` / ``np.less``
never take it for a new best, and ``EarlyStoppingCallback`` counts it as no improvement, in
either direction of ``greater_is_better``. (A 0 would be wrong: at the first evaluation a
drift of 0 would look like the most settled checkpoint.) A failed pass gives ``NaN`` for all
its keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch.distributed as dist

__all__ = ["EvaluationMetrics", "same_on_every_rank"]

_DRIFT = ("drift_vs_prev", "drift_vs_first")
# A group with a tracked region (its no_evidence_rate) is a tracker key: it drifts too.
_TRACKED_MARK = "no_evidence_rate"


class EvaluationMetrics:
    """The keys the callback gives at every evaluation, ``<prefix>/<group>/<name>``.

    ``prefix``: ``<tag_prefix>/<layer>``; ``methods``: the methods explained, each a group
    with drift. ``expect(tags)`` adds the tags a pass gives (the trial pass's, so that a
    failure at the first evaluation still gives every key); ``complete(scalars)`` is one
    evaluation's metrics."""

    def __init__(self, prefix: str, methods: Iterable[str]):
        self.prefix = prefix
        self.skipped = 0
        self._keys: dict[str, None] = {}  # insertion-ordered set
        self.expect(f"{method}/{name}" for method in methods for name in _DRIFT)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key known so far (full tags), ``skipped_passes`` last."""
        return (*self._keys, self._skipped_tag)

    @property
    def _skipped_tag(self) -> str:
        return f"{self.prefix}/skipped_passes"

    def expect(self, tags: Iterable[str]) -> None:
        """Add ``tags`` (relative to the prefix), and the drift of every tracked group."""
        for tag in tags:
            self._keys.setdefault(f"{self.prefix}/{tag}")
            group, _, name = tag.rpartition("/")
            if group and name == _TRACKED_MARK:
                for drift in _DRIFT:
                    self._keys.setdefault(f"{self.prefix}/{group}/{drift}")

    def complete(self, scalars: dict[str, float] | None) -> dict[str, float]:
        """One evaluation's metrics from a pass's ``scalars`` (full tags), ``None`` for a
        failed pass (counted in ``skipped_passes``): every known key, ``NaN`` where there
        is no value."""
        if scalars is None:
            self.skipped += 1
            scalars = {}
        else:
            self.expect(tag[len(self.prefix) + 1 :] for tag in scalars)
        metrics = {key: float(scalars.get(key, math.nan)) for key in self._keys}
        metrics[self._skipped_tag] = float(self.skipped)
        return metrics


def same_on_every_rank(metrics: dict[str, float]) -> dict[str, float]:
    """Rank zero's ``metrics`` on every rank. Every rank logs an evaluation at the same
    point of the loop, so the broadcast cannot wait on a rank that never comes."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return metrics
    box = [metrics]
    dist.broadcast_object_list(box, src=0)
    return box[0]
