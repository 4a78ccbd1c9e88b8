"""Sums of attention metrics over many batches and ranks: one float64 table, one collective.

A metric over a whole validation set is a ratio of sums (``energy_in_box = sum of each
map's energy share / number of maps``), so every rank adds its own batches' sums to a
:class:`MetricSums` table and one ``all_reduce`` (sum) of that table at the end gives the
sums over all ranks' images: the ratio is then the same, on every rank, as one process would
compute over all the images. Framework-free: ``torch.distributed`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = ["MetricSums", "all_reduce_sum"]


def all_reduce_sum(table: torch.Tensor) -> torch.Tensor:
    """``table`` summed over the ranks of the default process group (itself in one process).

    NCCL reduces CUDA tensors only: the table goes to the current CUDA device there."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return table
    on_cuda = dist.get_backend() == "nccl"
    flat = table.to(torch.device("cuda", torch.cuda.current_device())) if on_cuda else table
    flat = flat.clone()
    dist.all_reduce(flat)
    return flat.cpu()


class MetricSums:
    """Float64 sums per method, group and field; summed across ranks by one collective.

    Group 0 is the whole population; groups ``1..groups-1`` are optional sub-populations
    (the segmentation task's classes: group ``class_id + 1``).

    Example::

        sums = MetricSums(("gradcam",), ("energy_sum", "hits", "maps"))
        sums.add("gradcam", {"energy_sum": 0.7, "hits": 1, "maps": 1})
        sums.reduce()                 # one all_reduce under torch.distributed, else nothing
        sums.totals("gradcam")        # {"energy_sum": 0.7, "hits": 1.0, "maps": 1.0}
    """

    def __init__(self, methods: Sequence[str], fields: Sequence[str], groups: int = 1):
        self.methods = tuple(methods)
        self.fields = tuple(fields)
        self.groups = int(groups)
        self.table = torch.zeros(
            len(self.methods), self.groups, len(self.fields), dtype=torch.float64
        )

    def add(self, method: str, values: Mapping[str, float], group: int = 0) -> None:
        """Add ``values`` ``{field: value}`` to ``method``'s sums in ``group``."""
        i = self.methods.index(method)
        for name, value in values.items():
            self.table[i, group, self.fields.index(name)] += float(value)

    def reduce(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] = all_reduce_sum) -> None:
        """Sum the table over ranks: ``all_reduce`` is called once, on every rank."""
        self.table = all_reduce(self.table).to("cpu", torch.float64).reshape(self.table.shape)

    def totals(self, method: str, group: int = 0) -> dict[str, float]:
        """``{field: sum}`` of ``method`` in ``group``."""
        row = self.table[self.methods.index(method), group]
        return dict(zip(self.fields, row.tolist()))

    def groups_with(self, method: str, field: str) -> list[int]:
        """The groups (but 0) where ``field``'s sum is positive, ascending."""
        column = self.table[self.methods.index(method), 1:, self.fields.index(field)]
        return [int(g) + 1 for g in torch.nonzero(column > 0).flatten().tolist()]

    def clear(self) -> None:
        self.table.zero_()
