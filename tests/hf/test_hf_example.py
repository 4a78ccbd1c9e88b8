"""examples/hf_trainer.py (the shortcut demo in the Trainer), run as shipped (about 15 s on
one core): the mark is learnt in the second phase, accuracy picks a checkpoint of that phase
and energy_in_box one of the first, which looks at the shape; the Trainer keeps that one."""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.timeout(240)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "examples")


def test_energy_in_box_keeps_the_checkpoint_that_looks_at_the_shape(tmp_path, capsys):
    sys.path.insert(0, EXAMPLES)
    try:
        import hf_trainer
    finally:
        sys.path.remove(EXAMPLES)
    out = hf_trainer.main(["--out", str(tmp_path)])  # 10 epochs, the source switches after 5
    by_energy, by_accuracy = out["by_energy"], out["by_accuracy"]
    assert out["images"] == 128  # the scalars are over every evaluation image
    assert out["kept"] == f"checkpoint-{by_energy['step']}"
    assert by_energy["epoch"] <= 5 < by_accuracy["epoch"]  # before / after the mark pays
    assert by_accuracy["accuracy"] > by_energy["accuracy"] + 0.15
    # The energy-best checkpoint's maps are on the shape, the accuracy-best's are not (the
    # boxes cover about 0.16 of the images: an even map scores that).
    assert by_energy["energy_in_box"] > by_accuracy["energy_in_box"] + 0.1
    assert by_energy["pointing_game"] >= 0.6 and by_accuracy["pointing_game"] <= 0.2
    printed = capsys.readouterr().out
    assert f"the Trainer kept checkpoint-{by_energy['step']}" in printed
    assert (tmp_path / "curves.png").stat().st_size > 10_000
