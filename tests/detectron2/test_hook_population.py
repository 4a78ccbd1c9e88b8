"""GradCAMHook(metrics_loader=...): the scalars over every image of a loader equal a
computation by hand over all its detections; metrics_batches limits the batches."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from d2_helpers import build, make_inputs
from hook_helpers import fake_trainer

from detectron2_hooks import GradCAMHook
from detectron2_hooks.explain import DetectionCAM
from lightning_gradcam.core.drift import box_masks, energy_share, pointing_hits

METHODS = ("gradcam", "gradcam++")
ROOT = Path(__file__).resolve().parents[2]


def _by_hand(model, batches, layer) -> dict[str, float]:
    cam = DetectionCAM(model, layer=layer, methods=METHODS)
    out = {}
    dets = [d for batch in batches for ds in cam.explain(batch, max_detections=3) for d in ds]
    for method in METHODS:
        shares, hits, empty = [], [], 0
        for det in dets:
            cam_map = det.maps_by_layer[cam.layers[0]][method][None]
            if not det.evidence_by_layer[cam.layers[0]][method]:
                shares.append(0.0)
                hits.append(0.0)
                empty += 1
                continue
            region = box_masks(torch.as_tensor(det.box)[None], tuple(cam_map.shape[-2:]))
            shares.append(float(energy_share(cam_map, region)[0]))
            hits.append(float(pointing_hits(cam_map, region)[0]))
        out[f"{method}/energy_in_box"] = sum(shares) / len(dets)
        out[f"{method}/pointing_game"] = sum(hits) / len(dets)
        out[f"{method}/no_evidence_rate"] = empty / len(dets)
    out["detections_per_image"] = len(dets) / sum(len(b) for b in batches)
    return out


@pytest.mark.parametrize("limit", [None, 1])
def test_loader_means_equal_a_computation_by_hand(limit):
    model = build("c4")
    batches = [make_inputs(2, seed=s) for s in (1, 2, 3)]
    hook = GradCAMHook(
        inputs=batches[0],
        layer="roi_heads.res5",
        methods=METHODS,
        period=10,
        max_detections=3,
        metrics_loader=batches,
        metrics_batches=limit,
    )
    hook.trainer = fake_trainer(model, 9, 100)
    with hook.trainer.storage as storage:
        hook.before_train()
        hook.after_step()
        latest = {k: v for k, (v, _) in storage.latest().items() if "/validation/" in k}
    want = _by_hand(model, batches[:limit], "roi_heads.res5")
    assert hook._metrics.images == 2 * len(batches[:limit])
    assert set(latest) == {f"gradcam/validation/{k}" for k in want}
    for name, value in want.items():
        got = latest[f"gradcam/validation/{name}"]
        assert math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-7), (name, got, value)


def test_metrics_batches_without_a_loader_is_refused():
    with pytest.raises(ValueError, match="pass that loader too"):
        GradCAMHook(inputs=make_inputs(1), metrics_batches=2)


@pytest.mark.timeout(300)
def test_two_processes_under_launch_log_what_one_process_logs(tmp_path):
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = Path(__file__).with_name("hook_population_script.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(port)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["images"] == ranks[1]["images"] == 8  # both shards, on both ranks
    assert ranks[1]["scalars"] == {}  # rank zero alone writes
    batches = [make_inputs(2, seed=s) for s in (1, 2, 3, 4)]
    cam_model = build("c4")
    want = _by_hand(cam_model, batches, "roi_heads.res5")
    for name, value in want.items():
        if name.startswith("gradcam++"):
            continue
        got = ranks[0]["scalars"][f"gradcam/validation/{name}"]
        assert math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-7), (name, got, value)
    # One process over the whole loader, same weights: the same values as the two shards.
    single = GradCAMHook(
        inputs=batches[0],
        layer="roi_heads.res5",
        methods=("gradcam",),
        period=10,
        max_detections=3,
        metrics_loader=batches,
    )
    single.trainer = fake_trainer(cam_model, 9, 100)
    with single.trainer.storage as storage:
        single.before_train()
        single.after_step()
        one = {k: v for k, (v, _) in storage.latest().items() if "/validation/" in k}
    assert single._metrics.images == 8
    assert set(one) == set(ranks[0]["scalars"])
    for tag, value in one.items():
        assert math.isclose(ranks[0]["scalars"][tag], value, rel_tol=1e-9, abs_tol=1e-12), tag
