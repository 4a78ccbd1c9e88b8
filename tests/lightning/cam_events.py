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


def run_rank_script(script, out_dir, *args, timeout: float = 200) -> dict[int, dict]:
    """Run ``script out_dir *args`` in a fresh process (a DDP launcher: its workers write
    ``rank_N.json`` into ``out_dir``); ``{rank: report}``. A hang is killed with all its
    children and fails the test, with the output's tail."""
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out_dir), *map(str, args)],
        cwd=str(root),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so a hang can be killed with all its children
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"run hung (killed after {timeout:.0f} s):\n" + output.decode()[-3000:])
    assert proc.returncode == 0, output.decode()[-3000:]
    reports = (json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("rank_*.json")))
    return {r["rank"]: r for r in reports}
