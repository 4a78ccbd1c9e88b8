"""GradCAMYOLOCallback under Ultralytics DDP, without launching DDP (Ultralytics runs DDP on
GPUs only: ``device="cpu"`` never spawns workers).

Ultralytics' DDP re-launches training: ``generate_ddp_file`` pickles the trainer's callbacks
with cloudpickle, and every worker (``torch.distributed.run``) rebuilds the trainer from them.
So the callback (1) must survive that pickling and work in the re-launched process, which
these tests run exactly as a worker does, from Ultralytics' own generated file; and (2) must
do nothing on a rank other than 0: no samples, no trial pass, no writer, no collective call
(Ultralytics validates, saves and calls ``on_val_end`` on rank 0 only)."""

from __future__ import annotations

import csv
import json
import textwrap

import pytest

ultralytics = pytest.importorskip("ultralytics")

from cam_events import read_events  # noqa: E402
from yolo_runs import run_python, shapes_data, train_options  # noqa: E402

from lightning_gradcam import GradCAMYOLOCallback  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_data(tmp_path_factory.mktemp("yolo_ddp"))


def test_a_ddp_worker_rebuilt_from_ultralytics_state_file_runs_the_callback(data, tmp_path):
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    yolo = ultralytics.YOLO("yolov8n.yaml")
    callback = GradCAMYOLOCallback(num_samples=2, methods=("gradcam",)).attach(yolo)
    options = {**train_options(data, tmp_path, "worker", epochs=2), "model": "yolov8n.yaml"}
    trainer = DetectionTrainer(overrides=options, _callbacks=yolo.callbacks)
    script = generate_ddp_file(trainer)  # what Ultralytics' DDP launcher hands each worker
    try:
        run_python([script])
    finally:
        ddp_cleanup(trainer, script)
    save_dir = tmp_path / "worker"
    with open(save_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    prefix = "gradcam/head_input/gradcam"
    assert [float(row[f"{prefix}/found_rate"]) for row in rows] == [0.0, 0.0]
    images, scalars = read_events(save_dir)
    assert [step for step, _ in images[f"{prefix}/object_00"]] == [1, 2]
    assert [step for step, _ in scalars[f"{prefix}/energy_in_box"]] == [1, 2]
    # The launching process's callback is not the one that ran: results live in save_dir.
    assert callback.history == [] and callback.samples is None


_RANK_ONE = textwrap.dedent(
    """
    import json, sys
    import ultralytics
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import RANK
    from lightning_gradcam import GradCAMYOLOCallback

    options = json.loads(sys.argv[1])
    yolo = ultralytics.YOLO("yolov8n.yaml")
    callback = GradCAMYOLOCallback(num_samples=2).attach(yolo)
    trainer = DetectionTrainer(overrides=options, _callbacks=yolo.callbacks)
    # This trainer was never set up: it has no validation loader, so a pass taking samples
    # or explaining would raise here.
    callback.on_pretrain_routine_end(trainer)
    trainer.epoch, trainer.epochs, trainer.lr, trainer.metrics = 0, 1, {}, {}
    callback.on_fit_epoch_end(trainer)
    callback.teardown(trainer)
    print(json.dumps({
        "rank": RANK, "samples": callback.samples is None, "history": callback.history,
        "log_dir": callback.log_dir, "lr": trainer.lr, "metrics": trainer.metrics,
    }))
    """
)


def test_a_worker_of_rank_other_than_zero_takes_no_samples_and_writes_nothing(data, tmp_path):
    options = {**train_options(data, tmp_path, "rank1", epochs=1), "model": "yolov8n.yaml"}
    out = run_python(
        ["-c", _RANK_ONE, json.dumps(options)],
        env={"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"},
        timeout=120,
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {
        "rank": 1,
        "samples": True,
        "history": [],
        "log_dir": None,
        "lr": {},
        "metrics": {},
    }
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
