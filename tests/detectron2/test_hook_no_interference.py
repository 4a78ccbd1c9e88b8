"""Training with GradCAMHook is training without it: train mode, ``.grad``, RNG, weights."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hook_helpers import small_config, train

from detectron2_hooks import GradCAMHook
from detectron2_hooks.shapes import register_shapes, unregister

ITERS = 2


class ProbedHook(GradCAMHook):
    """Records, around every pass, what the pass must leave as it was."""

    def run(self):
        model = self.trainer.model
        flags = [m.training for m in model.modules()]
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        results = super().run()
        self.probes.append(
            {
                "flags_kept": flags == [m.training for m in model.modules()],
                "in_train_mode": model.training,
                "grad_ids": sorted(grads),
                "grads_kept": all(
                    torch.equal(grads[n], p.grad)
                    for n, p in model.named_parameters()
                    if p.grad is not None
                )
                and sorted(grads)
                == sorted(n for n, p in model.named_parameters() if p.grad is not None),
                "rng_kept": torch.equal(rng[0], torch.get_rng_state())
                and np.array_equal(rng[1], np.random.get_state()[1])
                and rng[2] == random.getstate(),
                "detections": sum(len(r) for r in results),
            }
        )
        return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    name = f"hook_ni_shapes_{os.getpid()}"
    dicts = register_shapes(name, str(tmp_path_factory.mktemp("shapes")), count=2, size=128)
    cfg = small_config("c4", score_thresh=0.001)
    train(cfg, dicts, ITERS)  # warm-up: the first run in a process differs from later ones
    _, plain = train(cfg, dicts, ITERS)
    hook = ProbedHook(dataset=name, num_images=2, period=1, max_detections=3, cfg=cfg)
    hook.probes = []
    trainer, hooked = train(cfg, dicts, ITERS, [hook])
    yield plain, hooked, hook, trainer
    unregister(name)


def test_weights_bit_identical_with_and_without_the_hook(runs):
    plain, hooked, hook, _ = runs
    assert len(hook.probes) == ITERS  # a pass after every step
    assert any(p["detections"] for p in hook.probes)  # the passes did explain something
    a, b = plain.state_dict(), hooked.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def test_each_pass_restores_train_mode_grads_and_rng(runs):
    _, hooked, hook, _ = runs
    assert hooked.training
    for probe in hook.probes:
        assert probe["in_train_mode"] and probe["flags_kept"]
        assert probe["grad_ids"], "the pass ran after a step, when .grad is set"
        assert probe["grads_kept"]
        assert probe["rng_kept"]
