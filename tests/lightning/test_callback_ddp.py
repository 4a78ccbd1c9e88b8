"""DDP on the CPU with 2 processes: only global rank zero explains and logs; nothing hangs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cam_events import read_events, run_rank_script, steps
from cam_tiny import LAYER

SCRIPT = Path(__file__).with_name("cam_ddp_script.py")


@pytest.mark.timeout(240)
def test_ddp_two_cpu_processes_write_one_set_of_images(tmp_path):
    reports = run_rank_script(SCRIPT, tmp_path)
    assert sorted(reports) == [0, 1]
    assert reports[0]["cam_count"] == 2 and reports[0]["has_samples"]
    assert reports[1]["cam_count"] == 0 and not reports[1]["has_samples"]
    assert reports[0]["eval_count"] == reports[1]["eval_count"] == 2
    # Every rank sees the callback's scalars, with rank zero's values.
    drift = f"gradcam/{LAYER}/gradcam/drift_vs_prev"
    assert drift in reports[0]["metrics"]
    assert reports[1]["metrics"] == reports[0]["metrics"]

    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert len(events) == 1, events  # rank zero's writer only
    images, scalars = read_events(tmp_path / "tb")
    step_per_epoch = reports[0]["global_step"] // 2
    prefix = f"gradcam/{LAYER}/gradcam"
    for i in range(4):
        assert steps(images[f"{prefix}/sample_{i:02d}"]) == [step_per_epoch, 2 * step_per_epoch]
    assert steps(images[f"gradcam/{LAYER}/inputs"]) == [step_per_epoch]
    assert steps(scalars[f"{prefix}/drift_vs_prev"]) == [2 * step_per_epoch]
