"""examples/hf_trainer.py (the shortcut demo in the Trainer), shortened: the Trainer keeps the
checkpoint the callback's energy_in_box picks, and both selections and the curves come out."""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.timeout(240)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "examples")


def test_the_trainer_keeps_the_checkpoint_energy_in_box_picks(tmp_path, capsys):
    sys.path.insert(0, EXAMPLES)
    try:
        import hf_trainer
    finally:
        sys.path.remove(EXAMPLES)
    out = hf_trainer.main(["--epochs", "4", "--train", "192", "--out", str(tmp_path)])
    assert out["kept"] == f"checkpoint-{out['step_by_energy']}"
    printed = capsys.readouterr().out
    assert (
        f"best by energy_in_box: epoch {out['by_energy']}, step {out['step_by_energy']}" in printed
    )
    assert (
        f"best by accuracy:      epoch {out['by_accuracy']}, step {out['step_by_accuracy']}"
        in printed
    )
    assert (tmp_path / "curves.png").stat().st_size > 10_000
