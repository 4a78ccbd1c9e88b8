"""DDP on the CPU with 2 processes: only global rank zero explains and logs; nothing hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cam_events import read_events, steps
from cam_tiny import LAYER

SCRIPT = Path(__file__).with_name("cam_ddp_script.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_ddp_two_cpu_processes_write_one_set_of_images(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so a hang can be killed with all its children
    )
    try:
        output, _ = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail("DDP run hung (killed after 200 s):\n" + output.decode()[-3000:])
    assert proc.returncode == 0, output.decode()[-3000:]

    reports = {
        r["rank"]: r
        for r in (json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank_*.json")))
    }
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
