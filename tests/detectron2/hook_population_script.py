"""Run by test_hook_population.py: GradCAMHook(metrics_loader=...) on 2 CPU processes started
by detectron2's own ``launch`` (without CUDA it picks the gloo backend), each rank with its
half of the batches.

Usage: python hook_population_script.py OUT_DIR PORT. Rank r writes ``rank_<r>.json``."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from d2_helpers import build, make_inputs  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from hook_helpers import fake_trainer  # noqa: E402

from detectron2_hooks import GradCAMHook  # noqa: E402


def worker(out: str) -> None:
    rank = comm.get_rank()
    batches = [make_inputs(2, seed=s) for s in (1, 2, 3, 4)]
    model = build("c4")
    hook = GradCAMHook(
        inputs=batches[0],
        layer="roi_heads.res5",
        methods=("gradcam",),
        period=10,
        max_detections=3,
        metrics_loader=batches[rank::2],  # this rank's shard
    )
    hook.trainer = fake_trainer(model, 9, 100)
    with hook.trainer.storage as storage:
        hook.before_train()
        hook.after_step()
        latest = {k: v for k, (v, _) in storage.latest().items() if "/validation/" in k}
    report = {"images": hook._metrics.images, "scalars": latest}
    with open(os.path.join(out, f"rank_{rank}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    launch(worker, 2, dist_url=f"tcp://127.0.0.1:{sys.argv[2]}", args=(sys.argv[1],))
