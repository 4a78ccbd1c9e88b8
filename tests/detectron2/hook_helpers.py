"""Helpers for the GradCAMHook tests: a registered shapes dataset, short SimpleTrainer runs,
and reading TensorBoard event files back."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.engine import HookBase, SimpleTrainer, hooks
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage, TensorboardXWriter
from tensorboard.backend.event_processing.event_accumulator import (
    IMAGES,
    SCALARS,
    EventAccumulator,
)

import detectron2_hooks  # noqa: F401  (registers the adapters)
from detectron2_hooks.shapes import register_shapes, unregister
from detectron2_hooks.tiny import tiny_config

MIN_SIZE = 96  # test-time resize: the 128-px dataset images reach the model at 96 px


def small_config(kind: str, **overrides):
    """``tiny_config`` trimmed further for training a few steps in tests."""
    overrides.setdefault("min_size", MIN_SIZE)
    overrides.setdefault("max_size", 128)
    cfg = tiny_config(kind, **overrides)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    return cfg


def training_batches(cfg, dicts: Sequence[dict], batch: int = 1) -> Iterator[list[dict]]:
    """Map the dicts once with the training mapper, then cycle over them in a fixed order
    (deterministic, no RNG draws while training)."""
    mapper = DatasetMapper(cfg, is_train=True)
    mapped = [mapper(dict(d)) for d in dicts]

    def batches():
        for start in itertools.count(0, batch):
            yield [mapped[(start + k) % len(mapped)] for k in range(batch)]

    return batches()


def train(
    cfg,
    dicts: Sequence[dict],
    iters: int,
    extra_hooks: Sequence[HookBase] = (),
    log_dir: str | None = None,
    writer_first: bool = True,
    seed: int = 0,
) -> tuple[SimpleTrainer, torch.nn.Module]:
    """A fresh seeded model trained ``iters`` SGD steps with ``SimpleTrainer``; with
    ``log_dir``, a ``PeriodicWriter([TensorboardXWriter])`` (period 2) registered before the
    extra hooks (``writer_first``, as ``register_hooks`` on a ``DefaultTrainer`` does) or
    after them."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # the training mapper's flips draw from NumPy's global stream
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    trainer = SimpleTrainer(model, training_batches(cfg, dicts), optimizer)
    hook_list = list(extra_hooks)
    if log_dir is not None:
        writer = hooks.PeriodicWriter([TensorboardXWriter(log_dir)], period=2)
        hook_list = [writer, *hook_list] if writer_first else [*hook_list, writer]
    trainer.register_hooks(hook_list)
    trainer.train(0, iters)
    return trainer, model


@contextlib.contextmanager
def shapes_dataset(tag: str, folder: str, count: int, size: int = 128):
    """A generated shapes dataset registered as ``<tag>_<pid>`` for the block:
    ``(name, dicts)``."""
    name = f"{tag}_{os.getpid()}"
    try:
        yield name, register_shapes(name, folder, count=count, size=size)
    finally:
        unregister(name)


def fake_trainer(model: torch.nn.Module, iteration: int = 0, max_iter: int = 100):
    """What a hook reads from its trainer, for calling hook methods directly; enter
    ``trainer.storage`` (an ``EventStorage``) around the calls."""
    return SimpleNamespace(
        model=model, storage=EventStorage(iteration), iter=iteration, max_iter=max_iter, cfg=None
    )


def read_events(log_dir: str) -> EventAccumulator:
    events = EventAccumulator(log_dir, size_guidance={IMAGES: 0, SCALARS: 0})
    events.Reload()
    return events


def image_steps(events: EventAccumulator, prefix: str = "gradcam/") -> dict[str, list[int]]:
    return {
        tag: [event.step for event in events.Images(tag)]
        for tag in events.Tags()["images"]
        if tag.startswith(prefix)
    }


def decode(encoded: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "PNG did not decode"
    return image
