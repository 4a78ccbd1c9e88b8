"""metrics_on="validation" under DDP (2 CPU processes, gloo): each rank measures its own
shard of the validation set, one all_reduce joins them, and both ranks log what one process
logs over the whole set with the same weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cam_events import run_rank_script

SCRIPT = Path(__file__).with_name("population_ddp_script.py")


def _run(out: Path, devices: int) -> dict[int, dict]:
    out.mkdir()
    return run_rank_script(SCRIPT, out, devices)


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
