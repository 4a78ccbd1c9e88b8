"""Which images ``GradCAMHook`` explains: the first dicts of a registered dataset, or the
dicts given, mapped to model inputs with the test-time mapper when they hold no image."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from detectron2.data import DatasetCatalog, DatasetMapper

__all__ = ["fixed_inputs"]


def fixed_inputs(
    dataset: str | None,
    given: Sequence[dict],
    num_images: int,
    mapper: Callable[[dict], dict] | None,
    cfg: Any,
) -> list[dict]:
    """The first ``num_images`` of ``dataset`` (or of ``given``) as model inputs (an
    ``"image"`` tensor; ground truth dropped). ``mapper`` maps a dataset dict, else
    ``DatasetMapper(cfg, is_train=False)``; a clear ``ValueError`` when neither is there or
    the dataset is unknown or empty."""
    if dataset is not None:
        try:
            dicts = DatasetCatalog.get(dataset)
        except KeyError as error:
            raise ValueError(
                f"dataset {dataset!r} is not registered; registered: "
                f"{', '.join(DatasetCatalog.list())}"
            ) from error
        source = list(dicts[:num_images])
        if not source:
            raise ValueError(f"dataset {dataset!r} has no images")
    else:
        source = list(given[:num_images])
    inputs = []
    for item in source:
        if not isinstance(item, dict):
            raise ValueError(f"inputs must be detectron2 dicts, got {type(item).__name__}")
        if not isinstance(item.get("image"), torch.Tensor):
            if mapper is None:
                mapper = DatasetMapper(_needed(cfg), is_train=False)
            item = mapper(copy.deepcopy(item))
        inputs.append({k: v for k, v in item.items() if k not in ("instances", "sem_seg")})
    return inputs


def _needed(cfg: Any) -> Any:
    if cfg is None:
        raise ValueError(
            "GradCAMHook needs a config to map dataset dicts with the test-time "
            "DatasetMapper: pass cfg=... (a DefaultTrainer's cfg is used automatically), "
            "mapper=... (a LazyConfig loop: instantiate(cfg.dataloader.test.mapper)), "
            "or give inputs= with 'image' tensors"
        )
    return cfg
