"""Test helpers for the whole-set measure (``metrics_on="validation"``): a task's means over
batches on one process, and comparing two dicts of scalars."""

from __future__ import annotations

import math

from lightning_gradcam.core.population import MetricSums
from lightning_gradcam.tasks.population import measure_for


def whole_set_means(task, network, batches) -> dict[str, float]:
    """The means of ``task``'s whole-set measure over ``batches``."""
    measure = measure_for(task)
    sums = MetricSums(task.options.methods, measure.fields, measure.groups)
    for batch in batches:
        measure.measure(network, batch, sums)
    sums.reduce()  # one process: the sums themselves
    return measure.means(sums)


def assert_same_scalars(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-9), (key, got[key], value)
