"""GradCAMHook in a LazyConfig training loop, as detectron2's ``tools/lazyconfig_train_net.py``
runs one, on one process or on several CPU processes (DDP on gloo) through
``detectron2.engine.launch``.

    python examples/detectron2_lazy_train.py --out runs/lazy                  # one process
    python examples/detectron2_lazy_train.py --out runs/lazy --num-processes 2  # DDP, CPU
    tensorboard --logdir runs/lazy

The model is a tiny RetinaNet from detectron2's shipped ``common/models/retinanet.py``
(``detectron2_hooks.tiny.tiny_lazy_config``), trained a few iterations on generated shapes.
There is no ``CfgNode`` in a LazyConfig loop, so the hook is built from constructor arguments,
with the test-time mapper instantiated from the config (``mapper=``).

DDP on CPUs: detectron2's ``create_ddp_model`` adds ``device_ids=[local_rank]`` unless the
caller passes ``device_ids``, and ``DistributedDataParallel`` rejects ``device_ids`` for a CPU
module. ``train.ddp.device_ids = None`` (here, or ``--opts``-style in your config) passes
``device_ids=None``, which DDP accepts on the CPU. The hook runs on the main process only and
calls no collective, so the other processes never wait for it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import detectron2.data.transforms as T
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_writers,
    hooks,
    launch,
)
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2_hooks import GradCAMHook
from detectron2_hooks.shapes import make_shape_dicts
from detectron2_hooks.tiny import tiny_lazy_config

DATASET = "lazy_train_shapes"


def lazy_config(output_dir: str, iters: int):
    """A full LazyConfig (model, dataloader, optimizer, lr_multiplier, train) around the tiny
    RetinaNet, with the fields ``tools/lazyconfig_train_net.py`` reads."""
    cfg = tiny_lazy_config("retinanet")  # CAM adapters switched by to_cam_config
    cfg.optimizer = model_zoo.get_config("common/optim.py").SGD
    cfg.optimizer.lr = 0.002
    cfg.lr_multiplier = L(MultiStepParamScheduler)(values=[1.0], milestones=[], num_updates=iters)
    resize = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=128)]
    cfg.dataloader = dict(
        train=L(build_detection_train_loader)(
            dataset=L(get_detection_dataset_dicts)(names=DATASET),
            mapper=L(DatasetMapper)(is_train=True, augmentations=resize, image_format="BGR"),
            total_batch_size=comm.get_world_size(),
            num_workers=0,
        ),
        test=dict(
            mapper=L(DatasetMapper)(is_train=False, augmentations=resize, image_format="BGR")
        ),
    )
    cfg.train = dict(
        output_dir=output_dir,
        max_iter=iters,
        log_period=20,
        device="cpu",
        amp=dict(enabled=False),
        # None, not absent: create_ddp_model would add device_ids=[rank], refused on the CPU.
        ddp=dict(broadcast_buffers=False, find_unused_parameters=False, device_ids=None),
    )
    cfg.model.test_score_thresh = 0.0001  # a model trained a few steps detects something
    return cfg


def main(output_dir: str, iters: int, period: int, dicts: list[dict]) -> None:
    """One process's training (every process registers the dataset: registries are
    per process)."""
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, lambda: dicts)
    cfg = lazy_config(output_dir, iters)
    # do_train of tools/lazyconfig_train_net.py, with the hook added before the writer.
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    main_process = comm.is_main_process()
    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter) if main_process else []
    gradcam = GradCAMHook(
        dataset=DATASET,
        num_images=2,
        methods=("gradcam", "hirescam"),
        period=period,
        max_detections=2,
        mapper=instantiate(cfg.dataloader.test.mapper),
        # Written right after each pass (the PeriodicWriter writes every log_period only).
        writers=[w for w in writers if not isinstance(w, CommonMetricPrinter)],
    )
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            gradcam,  # on every process; it works on the main process only
            hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main_process else None,
        ]
    )
    trainer.train(0, cfg.train.max_iter)
    if main_process:
        print(f"rank 0 of {comm.get_world_size()}: {len(gradcam.history)} Grad-CAM passes")
        print(f"tensorboard --logdir {output_dir}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lazy", help="output (TensorBoard) folder")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--period", type=int, default=2, help="iterations between passes")
    parser.add_argument("--num-processes", type=int, default=1, help="DDP processes (gloo)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    # Written once, here, before the processes start (they would race on the files).
    dicts = make_shape_dicts(os.path.join(args.out, "images"), 4, size=128, prefix=DATASET)
    launch(
        main,
        args.num_processes,
        dist_url="auto",
        args=(args.out, args.iters, args.period, dicts),
    )
    sys.exit(0)
