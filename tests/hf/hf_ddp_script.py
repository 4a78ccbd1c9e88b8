"""Run by test_trainer_ddp under ``torchrun`` or ``accelerate launch`` (2 processes): a Trainer run on gloo with
the callback; each rank writes the callback's eval metrics to <out>/rank<r>.json. With a second
argument ``evaluation``: ``metrics_on="evaluation"`` over 13 items (an odd count: one rank
measures 7, the other 6), and rank zero saves the final weights to <out>/weights.pt."""

from __future__ import annotations

import json
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_tiny import Squares, tiny_vit, training_args  # noqa: E402

from lightning_gradcam import GradCAMTrainerCallback  # noqa: E402

out = sys.argv[1]
whole = len(sys.argv) > 2 and sys.argv[2] == "evaluation"
transformers.set_seed(0)
cb = GradCAMTrainerCallback(
    methods=("gradcam",), num_samples=4, metrics_on="evaluation" if whole else "samples"
)
trainer = transformers.Trainer(
    model=tiny_vit(),
    args=training_args(
        out, per_device_train_batch_size=4, per_device_eval_batch_size=4, ddp_backend="gloo"
    ),
    train_dataset=Squares(32, seed=1),
    eval_dataset=Squares(13 if whole else 8, seed=2),
    callbacks=[cb],
)
trainer.train()
rank = int(os.environ["RANK"])
if whole and rank == 0:
    torch.save(trainer.model.state_dict(), os.path.join(out, "weights.pt"))
evals = [
    {k: v for k, v in e.items() if k.startswith("eval_gradcam/")}
    for e in trainer.state.log_history
    if "eval_loss" in e
]
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(
        {
            "evals": evals,
            "passes": len(cb.history),
            "log_dir": os.path.abspath(cb.log_dir),
            "layer": cb.task.layer_name,
            "images": cb.whole_set.images,
            "world_size": trainer.args.world_size,
        },
        f,
    )
