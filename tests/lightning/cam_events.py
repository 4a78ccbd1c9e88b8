"""GradCAMCallback test helpers: trainers for either package, reading event files back."""

from __future__ import annotations

import glob
import os

import cv2
import numpy as np


def make_trainer(pl, root, callbacks=(), logger=True, **kwargs):
    """A quiet CPU trainer for package ``pl`` writing under ``root``."""
    if logger is True:
        logger = pl.loggers.TensorBoardLogger(
            str(root), name="tb", version=kwargs.pop("version", 0)
        )
    options = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        num_sanity_val_steps=1,
        deterministic=True,
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def read_events(log_dir):
    """Every image and scalar in the event files under ``log_dir``:
    ``({tag: [(step, decoded uint8 RGB image)]}, {tag: [(step, value)]})``, steps ascending."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(str(log_dir), "**", "events.out.tfevents.*"), recursive=True)
    assert files, f"no event files under {log_dir}"
    images, scalars = {}, {}
    for path in files:
        acc = EventAccumulator(path, size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags["images"]:
            for event in acc.Images(tag):
                raw = np.frombuffer(event.encoded_image_string, np.uint8)
                decoded = cv2.imdecode(raw, cv2.IMREAD_COLOR)
                assert decoded is not None, f"{tag} at step {event.step} is not a PNG"
                assert decoded.shape[:2] == (event.height, event.width)
                images.setdefault(tag, []).append((event.step, decoded[..., ::-1]))
        for tag in tags["scalars"]:
            for event in acc.Scalars(tag):
                scalars.setdefault(tag, []).append((event.step, event.value))
    for store in (images, scalars):
        for tag in store:
            store[tag].sort(key=lambda item: item[0])
    return images, scalars


def steps(series):
    return [step for step, _ in series]
