"""GradCAMTrainerCallback under the Trainer's distributed run: 2 CPU processes on gloo, started
by torchrun or by accelerate launch: every rank reports the same scalars, only rank zero
computes and writes (one event file under the whole output folder)."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytestmark = pytest.mark.timeout(300)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(__file__), "hf_ddp_script.py")
LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_port", "29517"],
    # accelerate's --cpu starts one process (several only through mpirun): its torch
    # launcher starts two, and the script's use_cpu=True makes them CPU processes on gloo.
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29523"],
}  # fmt: skip


def _comparable(evals):
    return [{k: None if math.isnan(v) else v for k, v in e.items()} for e in evals]


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_ranks_report_the_same_values_and_one_writes(tmp_path, launcher):
    out = tmp_path / "run"
    # HF_HOME in tmp_path: accelerate reads no user config file, only these flags.
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    run = subprocess.run(
        [sys.executable, *LAUNCHERS[launcher], SCRIPT, str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    zero, one = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["world_size"] == one["world_size"] == 2
    assert len(zero["evals"]) == 2 and all(zero["evals"])
    assert _comparable(zero["evals"]) == _comparable(one["evals"])
    assert zero["passes"] == 2 and one["passes"] == 0  # rank one never computes
    events = glob.glob(os.path.join(str(out), "**", "events.out.tfevents.*"), recursive=True)
    assert len(events) == 1  # the Trainer's one run, written by rank zero
    assert os.path.dirname(events[0]) == zero["log_dir"]


def test_two_ranks_log_the_means_one_process_computes_over_the_whole_set(tmp_path):
    """metrics_on="evaluation": each rank measures its share of the 13 items (7 and 6, none
    repeated), one all_reduce; both ranks log the means over all 13 that one process computes
    by hand from the final weights."""
    import torch
    from hf_tiny import Squares, tiny_vit, whole_set_by_hand

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))
    run = subprocess.run(
        [sys.executable, *LAUNCHERS["torchrun"], SCRIPT, str(out), "evaluation"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    zero, one = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert _comparable(zero["evals"]) == _comparable(one["evals"])
    assert zero["images"] == one["images"] == 13
    model = tiny_vit()
    model.load_state_dict(torch.load(out / "weights.pt"))
    want = whole_set_by_hand(model, Squares(13, seed=2), zero["layer"])
    prefix = f"eval_gradcam/{zero['layer']}/gradcam"
    for name, value in want.items():
        assert zero["evals"][-1][f"{prefix}/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-7)
