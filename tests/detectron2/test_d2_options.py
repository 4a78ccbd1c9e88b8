"""Detectron2CAM takes the options every detection side takes (score=, reshape=, choose=,
methods=), checked before any forward; detectron2_hooks.DetectionCAM is a deprecated alias
that warns once per process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from d2_helpers import make_inputs

from detectron2_hooks import Detectron2CAM


def test_choose_picks_rows_in_its_order(models):
    cam = Detectron2CAM(models["c4"], methods=("gradcam",))
    top = cam.explain(make_inputs(2), max_detections=None)
    counts = [len(per) for per in top]
    assert counts[0] > 3
    seen = []

    def choose(outputs):
        seen.append(outputs)
        return [[3, 0], []]

    chosen = cam.explain(make_inputs(2), choose=choose)
    assert [d.rank for d in chosen[0]] == [3, 0] and chosen[1] == []
    assert [len(o["scores"]) for o in seen[0]] == counts
    by_rank = {d.rank: d for d in top[0]}
    for det in chosen[0]:
        torch.testing.assert_close(det.box, by_rank[det.rank].box)
        torch.testing.assert_close(det.maps["gradcam"], by_rank[det.rank].maps["gradcam"])


@pytest.mark.parametrize(
    ("kwargs", "error", "says"),
    [
        ({"score": "prob"}, ValueError, "score must be 'logit'"),
        ({"reshape": 3}, TypeError, "reshape must be a callable"),
        ({"methods": ("guided_backprop",)}, ValueError, "guided"),
    ],
)
def test_bad_options_fail_at_construction(models, kwargs, error, says):
    with pytest.raises(error, match=says):
        Detectron2CAM(models["c4"], **kwargs)


def test_bad_choose_fails_with_what_to_pass(models):
    cam = Detectron2CAM(models["retinanet"])
    with pytest.raises(TypeError, match="choose must be None"):
        cam.explain(make_inputs(1), choose=[[0]])
    with pytest.raises(ValueError, match="choose returned rows"):
        cam.explain(make_inputs(1), choose=lambda outputs: [[10_000]])


def test_the_old_name_warns_once_per_process():
    code = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "import detectron2_hooks as d2\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from detectron2_hooks import DetectionCAM\n"
        "    again = d2.DetectionCAM\n"
        "    import detectron2_hooks.hook\n"
        "msgs = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]\n"
        "print(len([m for m in msgs if 'Detectron2CAM' in m]))\n"
        "print(DetectionCAM is again is d2.Detectron2CAM)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    assert out == ["1", "True"]
