"""GradCAMTrainerCallback under the Trainer's distributed run: 2 CPU processes on gloo
(torchrun): every rank reports the same scalars, only rank zero computes and writes."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytestmark = pytest.mark.timeout(300)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_ranks_report_the_same_values_and_one_writes(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "hf_ddp_script.py")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29517", script, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(zero["evals"]) == 2 and all(zero["evals"])
    assert zero["evals"] == one["evals"]
    assert zero["passes"] == 2 and one["passes"] == 0  # rank one never computes
    events = glob.glob(os.path.join(zero["log_dir"], "events.out.tfevents.*"))
    assert len(events) == 1  # the Trainer's one run, written by rank zero
