"""What the callback says in words: the line it logs once its task and layer are known (at
fit start, after the trial pass), the layer explained and the exact tags a monitor can name;
and why it does nothing outside ``trainer.fit()``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["NO_SAMPLES", "announce", "info_logger", "outside_fit"]


#: Said once when an evaluation point comes and the callback has no samples to explain.
NO_SAMPLES = (
    "GradCAMCallback has no samples to explain (the validation loop produced no batch); pass "
    "images=... to the callback"
)


def info_logger(trainer: Any) -> Callable[[str], None]:
    """``rank_zero_info`` of the trainer's own Lightning package (``pytorch_lightning`` or
    ``lightning.pytorch``): its logger is the one Lightning prints ``INFO:`` lines with."""
    package = type(trainer).__module__.split(".trainer")[0]
    try:
        return importlib.import_module(f"{package}.utilities.rank_zero").rank_zero_info
    except ImportError:  # a trainer-like object from elsewhere: Python's logging
        import logging

        return logging.getLogger("lightning_gradcam").info


def announce(trainer: Any, task_name: str, layer: str, prefix: str, tags: Sequence[str]) -> str:
    """Log (and return) one line: the task, the layer explained and the monitorable tags."""
    if tags:
        listed = ", ".join(tags)
        what = f"scalars logged at every pass (monitor any; callback.tags): {listed}"
    else:
        what = (
            "no scalar to monitor: pass boxes= or masks= (or give them in the validation "
            "batches) for energy_in_box, pointing_game and no_evidence_rate"
        )
    line = f"GradCAMCallback: {task_name} task, layer {layer!r} (tags under {prefix}/); {what}"
    info_logger(trainer)(line)
    return line


def outside_fit(trainer: Any) -> str | None:
    """The warning for a ``trainer.validate()``, ``test()`` or ``predict()`` run, where the
    callback does nothing; None inside ``trainer.fit()``."""
    entry = trainer.state.fn
    if entry == "fit":
        return None
    return (
        f"GradCAMCallback runs inside trainer.fit() only; skipped for "
        f"trainer.{getattr(entry, 'value', entry)}() (explain a model outside training with "
        "lightning_gradcam.CAMEngine)."
    )
