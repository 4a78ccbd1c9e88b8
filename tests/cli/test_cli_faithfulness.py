"""`lightning-gradcam --faithfulness`: numbers per image, the engine's own, and clear errors."""

from __future__ import annotations

import re

import pytest

from lightning_gradcam import CAMEngine
from lightning_gradcam.cli import main
from lightning_gradcam.io import read_image
from lightning_gradcam.models.networks import materialize, prepare_network

SMALL = "shufflenet_v2_x1_0"
LINE = re.compile(r"^  faithfulness (\S+): deletion_auc (\S+), insertion_auc (\S+)$")


def test_prints_the_engines_numbers_for_every_image_method_and_the_random_map(
    checkpoints, image_dir, tmp_path, capsys
):
    argv = ["--image-path", image_dir, "--network", SMALL, "--weight-path", checkpoints[SMALL]]
    argv += ["--input-size", 64, "--methods", "gradcam", "gradcam++", "--output-dir", tmp_path]
    code = main([str(a) for a in [*argv, "--faithfulness", "deletion,insertion"]])
    out = capsys.readouterr().out
    assert code == 0
    printed = {}
    image = None
    for line in out.splitlines():
        if line.startswith(str(image_dir)):
            image = line.split(" [")[0]
        elif match := LINE.match(line):
            printed[(image, match[1])] = (float(match[2]), float(match[3]))
    names = ("gradcam", "gradcam++", "random")
    paths = sorted(str(p) for p in image_dir.iterdir() if p.suffix != ".txt")
    assert set(printed) == {(p, n) for p in paths for n in names}

    spec = prepare_network(SMALL, checkpoints[SMALL], input_size=64)
    engine = CAMEngine(materialize(spec), layer=spec.layer, methods=("gradcam", "gradcam++"))
    for path in paths:
        _, x = spec.preprocess(read_image(path))
        result = engine.explain(x[None])  # the predicted class, as the command explains
        scores = engine.faithfulness(x[None], result, ("deletion", "insertion")).scores
        for name in names:
            expected = (scores[name]["deletion_auc"], scores[name]["insertion_auc"])
            assert printed[(path, name)] == pytest.approx(
                tuple(float(v[0]) for v in expected), rel=1e-3
            )
            assert all(0 <= v <= 1 for v in printed[(path, name)])


def test_unknown_metric_is_a_usage_error(tmp_path, capsys):
    code = main(["--faithfulness", "deletion,auc", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "argument --faithfulness: unknown faithfulness metric(s) ['auc']" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
