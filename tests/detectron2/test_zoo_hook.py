"""GradCAMHook in a LazyConfig training loop (``examples/detectron2_lazy_train.py``, which
follows ``tools/lazyconfig_train_net.py``: ``instantiate(cfg.model)``, ``SimpleTrainer`` plus
``register_hooks``, no ``CfgNode``), on one process and on two CPU processes launched by
``detectron2.engine.launch`` (DDP on gloo). What is asserted is what reaches the event file.

5 iterations, a period of 2: passes after iterations 1 and 3, and the last at iteration 4;
the ``PeriodicWriter`` writes every 20 iterations, so passes 1 and 3 reach the file through
the writers handed to the hook (``writers=``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog
from hook_helpers import read_events

from detectron2_hooks.shapes import make_shape_dicts

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "detectron2_lazy_train.py"
STEPS = [1, 3, 4]
TAGS = {
    f"gradcam/image_{i:02d}/{what}"
    for i in range(2)
    for what in ("detections", "gradcam", "hirescam", "gradcam/filmstrip", "hirescam/filmstrip")
}


def _example():
    spec = importlib.util.spec_from_file_location("detectron2_lazy_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_one_set_of_passes(out: Path) -> None:
    files = sorted(p.name for p in out.iterdir() if p.name.startswith("events.out.tfevents"))
    assert len(files) == 1, files  # written by the main process only
    events = read_events(str(out))
    images = {
        tag: [e.step for e in events.Images(tag)]
        for tag in events.Tags()["images"]
        if tag.startswith("gradcam/")
    }
    assert set(images) == TAGS
    assert all(steps == STEPS for steps in images.values()), images  # once each, no duplicate
    for i in range(2):
        scalars = [e.step for e in events.Scalars(f"gradcam/image_{i:02d}/num_detections")]
        assert scalars == STEPS
    # The training's own scalars are there too (the run is a real LazyConfig loop).
    assert "total_loss" in events.Tags()["scalars"]


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    example = _example()
    out = tmp_path_factory.mktemp("lazy_run")
    dicts = make_shape_dicts(str(out / "images"), 4, size=128, prefix=example.DATASET)
    try:
        example.main(str(out), 5, 2, dicts)
    finally:
        if example.DATASET in DatasetCatalog.list():
            DatasetCatalog.remove(example.DATASET)
    return out


def test_hook_logs_into_a_lazyconfig_run_at_the_expected_iterations(single_process_run):
    _assert_one_set_of_passes(single_process_run)


def test_ddp_through_launch_two_cpu_processes_no_hang_one_set(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, str(EXAMPLE), "--out", str(out), "--num-processes", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # A collective called on one process only would hang: the timeout turns that into a failure.
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2: 3 Grad-CAM passes" in done.stdout
    assert done.stdout.count("Grad-CAM passes") == 1
    _assert_one_set_of_passes(out)


def test_mapper_must_be_callable():
    from detectron2_hooks import GradCAMHook

    with pytest.raises(ValueError, match="mapper must be a callable"):
        GradCAMHook(dataset="x", mapper="not callable")
