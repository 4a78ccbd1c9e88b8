"""Ultralytics in tests: offline, its settings in a folder of this session (never the
user's), every integration off (MLflow is installed here and would start runs), no plots."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
if "YOLO_CONFIG_DIR" not in os.environ:
    os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="yolo-config-")
    atexit.register(shutil.rmtree, os.environ["YOLO_CONFIG_DIR"], True)

import pytest  # noqa: E402

INTEGRATIONS_OFF = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
}


@pytest.fixture(scope="session", autouse=True)
def _ultralytics_quiet():
    ultralytics = pytest.importorskip("ultralytics")
    ultralytics.settings.update(INTEGRATIONS_OFF)
