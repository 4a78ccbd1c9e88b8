"""``GradCAMTrainerCallback(metrics_on="evaluation")``: the attention scalars over every item
of the set the ``Trainer`` just evaluated, split across its processes.

At each evaluation every process measures its own share of the evaluated dataset, items
``rank, rank + W, rank + 2W, ...`` of ``W`` processes, so that each item is measured exactly
once. (Accelerate's evaluation loader evens the shares out by repeating items, which the
``Trainer`` removes again when it gathers predictions; a sum cannot remove them.) The items
are batched by ``per_device_eval_batch_size`` and collated by the Trainer's own
``data_collator``. They are not passed through ``remove_unused_columns``, so ``boxes`` or
``masks`` that the model's ``forward`` does not take still reach the measure. Each batch is
measured with the task's :class:`~lightning_gradcam.tasks.population.PopulationMeasure`, the
same one ``GradCAMCallback(metrics_on="validation")`` uses. One ``all_reduce`` joins the sums
of all processes, and the means replace the fixed samples' own ``energy_in_box`` /
``energy_in_mask``, ``pointing_game`` and ``no_evidence_rate`` (per class for segmentation).
They replace them in the evaluation's metrics and on TensorBoard.

The ``Trainer``'s evaluation loop shows its callbacks no batch before its forward, so the
measure runs a forward of its own for each batch, plus one backward to the layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from torch import nn

from ..core.state import preserve_rng
from ..lightning.population import SetSums, ValidationMetrics, check_metrics_on
from ..tasks import CAMTask
from .samples import to_task_batch

__all__ = ["EvaluationSet", "check_evaluation_metrics"]

_OWNER = "GradCAMTrainerCallback(metrics_on='evaluation')"


def check_evaluation_metrics(
    metrics_on: object, metrics_batches: object, target: object
) -> tuple[str, int | None]:
    """``metrics_on`` (``"samples"`` or ``"evaluation"``) and ``metrics_batches``, checked
    with the callback's other arguments, before training."""
    metrics_on, metrics_batches = check_metrics_on(metrics_on, metrics_batches, "evaluation")
    if metrics_on == "evaluation" and not isinstance(target, (str, int)) and not callable(target):
        raise ValueError(
            "target= gives one class id per fixed sample; metrics_on='evaluation' explains "
            "every evaluation image: use target='auto', 'label', 'prediction', one class id "
            "or a callable"
        )
    return metrics_on, metrics_batches


def process_share(trainer: Any, dataset: Any, max_batches: int | None) -> Iterator[Any]:
    """This process's batches of ``dataset``, as the tasks read them (module docstring)."""
    try:
        count = len(dataset)
    except TypeError:
        raise ValueError(
            f"metrics_on='evaluation' measures every item of the eval_dataset, which needs "
            f"len() and indexing; {type(dataset).__name__} has no len(): use a map-style "
            "dataset, or metrics_on='samples'"
        ) from None
    args = trainer.args
    rank, world = int(args.process_index), max(1, int(args.world_size))
    share = range(rank, count, world)
    size = int(args.per_device_eval_batch_size)
    for index, start in enumerate(range(0, len(share), size)):
        if max_batches is not None and index >= max_batches:
            return
        items = [dataset[i] for i in share[start : start + size]]
        yield to_task_batch(trainer.data_collator(items))


def _columns_removed(evaluated: Any, given: Any) -> bool:
    """Whether ``evaluated`` is ``given`` less some columns (``Trainer._remove_unused_columns``
    on a ``datasets.Dataset``): the same rows, a subset of its columns."""
    columns, given_columns = (getattr(d, "column_names", None) for d in (evaluated, given))
    if columns is None or given_columns is None:
        return False
    return len(evaluated) == len(given) and set(columns) <= set(given_columns)


class EvaluationSet(SetSums):
    """The whole-set sums of one ``GradCAMTrainerCallback`` on one process: off for
    ``metrics_on="samples"``; for ``"evaluation"``, a trial before training and, at each
    evaluation, the means over the evaluated set (module docstring).

    Attributes: ``enabled``; ``images``: how many images (all processes) the last means are
    over.
    """

    def __init__(self, metrics_on: str, max_batches: int | None, on_error: str):
        super().__init__(metrics_on, "evaluation", max_batches, on_error, _OWNER)
        self._means: dict[tuple[int, str], dict[str, float] | None] = {}
        self._keys: dict[str, None] = {}  # every whole-set key given so far, in order

    def trial(self, trainer: Any, task: CAMTask, network: nn.Module) -> None:
        """Every process, before training: measure the first batch of its share of each
        eval_dataset (each entry of a dict) and forget it, so that a set the measure cannot
        take fails now, with what to change."""
        self._sums, self._means, self._keys = None, {}, {}
        if not self.enabled:
            return
        given = trainer.eval_dataset
        if given is None:
            raise ValueError(
                "metrics_on='evaluation' measures the Trainer's eval_dataset, but it has none: "
                "give the Trainer an eval_dataset or use metrics_on='samples'"
            )
        named = given.items() if isinstance(given, dict) else [(None, given)]
        with preserve_rng():
            for name, dataset in named:
                try:
                    batch = next(process_share(trainer, dataset, 1), None)
                    if batch is None:
                        continue  # this process's share is empty: it adds zeros to the sums
                    self._for(task).trial(task, network, batch)
                except ValueError as error:
                    which = "" if name is None else f" (eval_dataset[{name!r}])"
                    raise ValueError(f"{_OWNER}{which}: {error}") from error

    def means(
        self,
        trainer: Any,
        task: CAMTask,
        network: nn.Module,
        dataset: Any,
        step: int,
        metric_prefix: str,
    ) -> dict[str, float] | None:
        """Every process, at the evaluation logged under ``metric_prefix`` (``eval``,
        ``eval_<name>``) at ``step``: the means over ``dataset`` (``{"<method>/<name>":
        value}``), or None when a batch failed; computed once per evaluation."""
        key = (step, metric_prefix)
        if key not in self._means:
            sums = self._for(task)
            with preserve_rng():
                for index, batch in enumerate(process_share(trainer, dataset, self._max_batches)):
                    sums.batch(task, network, batch, index)
            self._means[key] = sums.finish()
            self._means = {k: v for k, v in self._means.items() if k[0] == step}
        return self._means[key]

    @staticmethod
    def evaluated_dataset(trainer: Any, eval_dataloader: Any, metric_prefix: str) -> Any:
        """The dataset of the evaluation logged under ``metric_prefix``, as given to the
        Trainer (``eval_dataset``, or its entry ``<name>`` for ``eval_<name>``).

        The loader the Trainer hands its callbacks holds the set it evaluated: when that is
        the given one with the columns the model does not take removed (a ``datasets.Dataset``
        under ``remove_unused_columns``), the given one is measured, so ``boxes``/``masks``
        stay; when it is another set (``evaluate(eval_dataset=...)``), that set."""
        given = trainer.eval_dataset
        if isinstance(given, dict):
            given = given.get(metric_prefix[len("eval_") :])
        evaluated = getattr(eval_dataloader, "dataset", None)
        if evaluated is None or evaluated is given or _columns_removed(evaluated, given):
            return given if given is not None else evaluated
        return evaluated

    def in_metrics(
        self, metrics: dict[str, float], means: dict[str, float] | None, prefix: str
    ) -> dict[str, float]:
        """An evaluation's ``metrics`` (full tags) with the whole-set ``means`` in place of
        the fixed samples' own scalars. A key a set gave once is there at every evaluation
        from then on, ``NaN`` when it has no value (a failed measurement), as the Trainer's
        ``metric_for_best_model`` needs."""
        full = {f"{prefix}/{name}": value for name, value in (means or {}).items()}
        self._keys.update(dict.fromkeys(full))
        merged = ValidationMetrics.merge(metrics, full)
        known = {key: merged.get(key, math.nan) for key in metrics}
        return known | {key: full.get(key, math.nan) for key in self._keys}
