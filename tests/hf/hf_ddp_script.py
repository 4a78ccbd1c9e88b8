"""Run by test_trainer_ddp under ``torchrun --nproc_per_node 2``: a Trainer run on gloo with
the callback; each rank writes the callback's eval metrics to <out>/rank<r>.json."""

from __future__ import annotations

import json
import os
import sys

import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_tiny import Squares, tiny_vit, training_args  # noqa: E402

from lightning_gradcam import GradCAMTrainerCallback  # noqa: E402

out = sys.argv[1]
transformers.set_seed(0)
cb = GradCAMTrainerCallback(methods=("gradcam",), num_samples=4)
trainer = transformers.Trainer(
    model=tiny_vit(),
    args=training_args(out, per_device_train_batch_size=4, ddp_backend="gloo"),
    train_dataset=Squares(32, seed=1),
    eval_dataset=Squares(8, seed=2),
    callbacks=[cb],
)
trainer.train()
rank = int(os.environ["RANK"])
evals = [
    {k: v for k, v in e.items() if k.startswith("eval_gradcam/")}
    for e in trainer.state.log_history
    if "eval_loss" in e
]
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"evals": evals, "passes": len(cb.history), "log_dir": cb.log_dir}, f)
