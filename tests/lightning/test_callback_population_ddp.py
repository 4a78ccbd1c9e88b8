"""metrics_on="validation" under DDP (2 CPU processes, gloo): each rank measures its own
shard of the validation set, one all_reduce joins them, and both ranks log what one process
logs over the whole set with the same weights."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("population_ddp_script.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, devices: int) -> dict[int, dict]:
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), str(devices)],
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
        pytest.fail("run hung (killed after 200 s):\n" + output.decode()[-3000:])
    assert proc.returncode == 0, output.decode()[-3000:]
    reports = (json.loads(p.read_text()) for p in sorted(out.glob("rank_*.json")))
    return {r["rank"]: r for r in reports}


@pytest.mark.timeout(480)
def test_two_ddp_processes_log_what_one_process_logs(tmp_path):
    one = _run(tmp_path / "one", 1)[0]
    two = _run(tmp_path / "two", 2)
    assert sorted(two) == [0, 1]
    assert one["images"] == two[0]["images"] == two[1]["images"] == 24
    tags = [t for t in one["metrics"] if t.endswith(("energy_in_box", "pointing_game"))]
    assert len(tags) == 2
    for tag in [*tags, tags[0].rsplit("/", 1)[0] + "/no_evidence_rate"]:
        for rank in (0, 1):
            got, want = two[rank]["metrics"][tag], one["metrics"][tag]
            assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-7), (rank, tag, got, want)
