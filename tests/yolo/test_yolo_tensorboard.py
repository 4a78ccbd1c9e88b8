"""GradCAMYOLOCallback writes into Ultralytics' own TensorBoard event file when Ultralytics'
TensorBoard callback is on.

Ultralytics switches that callback off whenever it sees pytest (``TESTS_RUNNING``: the
``PYTEST_CURRENT_TEST`` variable, ``pytest`` imported, or a pytest command), so the run is a
fresh process without any of them, with its own settings folder where ``tensorboard`` is on."""

from __future__ import annotations

import glob
import textwrap
from pathlib import Path

import pytest

ultralytics = pytest.importorskip("ultralytics")

from cam_events import read_events  # noqa: E402
from yolo_runs import run_python, shapes_data  # noqa: E402

_RUN = textwrap.dedent(
    """
    import sys
    import ultralytics
    from ultralytics.utils import TESTS_RUNNING
    assert not TESTS_RUNNING, "Ultralytics thinks this is a test: its TensorBoard stays off"
    settings = dict.fromkeys(
        ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "wandb"), False
    )
    ultralytics.settings.update({**settings, "tensorboard": True})
    sys.path.insert(0, sys.argv[3])
    from yolo_runs import train
    from lightning_gradcam import GradCAMYOLOCallback

    callback = GradCAMYOLOCallback(num_samples=2, methods=("gradcam",))
    train(sys.argv[1], sys.argv[2], "tb", callback)
    """
)


def test_pictures_and_scalars_go_into_ultralytics_own_event_file(tmp_path):
    data = shapes_data(tmp_path)
    runs, here = tmp_path / "runs", str(Path(__file__).parent)
    run_python(
        ["-c", _RUN, str(data), str(runs), here],
        env={"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(tmp_path / "settings")},
        drop=("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER"),
    )
    files = glob.glob(str(runs / "tb" / "**" / "events.out.tfevents.*"), recursive=True)
    assert len(files) == 1, files  # one file: Ultralytics' own, no second writer
    images, scalars = read_events(runs / "tb")
    prefix = "gradcam/head_input/gradcam"
    for theirs in ("train/box_loss", "metrics/mAP50(B)", "lr/pg0"):  # (+ best.pt's at 3)
        assert [step for step, _ in scalars[theirs]][:2] == [1, 2], theirs
    for ours in ("energy_in_box", "found_rate", "pointing_game", "no_evidence_rate"):
        assert [step for step, _ in scalars[f"{prefix}/{ours}"]] == [1, 2], ours
    assert [step for step, _ in images[f"{prefix}/object_00"]] == [1, 2]
    assert [step for step, _ in images[f"{prefix}/grid"]] == [1, 2]
