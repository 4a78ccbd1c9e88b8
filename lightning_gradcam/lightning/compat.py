"""One callback for both Lightning packages: ``pytorch_lightning`` and ``lightning.pytorch``.

The two packages ship separate, identical ``Callback`` base classes, and each Trainer checks
``isinstance(cb, <its own> Callback)`` (e.g. to decide whether ``state_dict`` is overridden).
``CALLBACK_BASES`` holds every installed one, so a class deriving from all of them is a
callback to either Trainer. Both bases define the same no-op hooks, so the method resolution
order between them does not matter.
"""

from __future__ import annotations

import importlib

__all__ = [
    "CALLBACK_BASES",
    "tensorboard_logger_types",
    "wandb_logger_types",
    "mlflow_logger_types",
    "csv_logger_types",
    "dummy_logger_types",
    "sharded_strategy_name",
]

_PACKAGES = ("pytorch_lightning", "lightning.pytorch")


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _callback_bases() -> tuple[type, ...]:
    bases = []
    for package in _PACKAGES:
        module = _import(package)
        if module is not None:
            bases.append(module.Callback)
    if not bases:
        raise ImportError(
            "GradCAMCallback needs PyTorch Lightning: pip install pytorch-lightning (or lightning)"
        )
    return tuple(bases)


CALLBACK_BASES: tuple[type, ...] = _callback_bases()


def _logger_types(class_name: str, module_name: str = "loggers") -> tuple[type, ...]:
    """Every installed Lightning logger class called ``class_name`` (one per package).

    Looking a class up never imports the logger's own library (wandb, mlflow): Lightning
    imports those only when such a logger is created or used.
    """
    types = []
    for package in _PACKAGES:
        module = _import(f"{package}.{module_name}")
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


def tensorboard_logger_types() -> tuple[type, ...]:
    """Every installed Lightning ``TensorBoardLogger`` class (one per package)."""
    return _logger_types("TensorBoardLogger")


def wandb_logger_types() -> tuple[type, ...]:
    """Every installed Lightning ``WandbLogger`` class (one per package)."""
    return _logger_types("WandbLogger")


def mlflow_logger_types() -> tuple[type, ...]:
    """Every installed Lightning ``MLFlowLogger`` class (one per package)."""
    return _logger_types("MLFlowLogger")


def csv_logger_types() -> tuple[type, ...]:
    """Every installed Lightning ``CSVLogger`` class (one per package)."""
    return _logger_types("CSVLogger")


def dummy_logger_types() -> tuple[type, ...]:
    """Every installed Lightning ``DummyLogger`` (what ``fast_dev_run`` puts in place of the
    user's loggers; it lives in ``loggers.logger``)."""
    return _logger_types("DummyLogger", "loggers.logger")


# Strategies that shard parameters across ranks: a forward pass needs every rank, so a
# rank-zero-only CAM pass would hang or see partial weights.
_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def sharded_strategy_name(strategy: object) -> str | None:
    """The name of the sharded-strategy class ``strategy`` is (or derives from), else None.

    Checked by class name along the MRO, so it covers both packages' classes (and
    subclasses) without importing optional dependencies such as DeepSpeed.
    """
    for cls in type(strategy).__mro__:
        if cls.__name__ in _SHARDED:
            return cls.__name__
    return None


def refuse_sharded(strategy: object) -> None:
    """Raise before training when ``strategy`` shards the model (FSDP, DeepSpeed): a CAM pass
    runs on global rank zero only, and a sharded model needs every rank in each forward."""
    sharded = sharded_strategy_name(strategy)
    if sharded is not None:
        raise RuntimeError(
            f"GradCAMCallback does not support the sharded strategy {sharded}: a CAM pass "
            "runs on global rank zero only, but a sharded model needs every rank in each "
            "forward pass. Use strategy='ddp' (or a single device) for runs you explain."
        )
