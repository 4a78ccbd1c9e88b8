"""GradCAMHook in real training runs: what reaches the TensorBoard event file, and when.

Two runs of 5 iterations with a period of 2 (passes after iterations 1 and 3, and the last
pass at iteration 4): a CAM Faster R-CNN (C4) in a ``DefaultTrainer`` subclass built from
config with the mixin (writer period 20: passes 1 and 3 are written through the writers the
mixin hands to the hook), and a ``CAMRetinaNet`` in a ``SimpleTrainer`` with the hook
registered before its ``PeriodicWriter``. A third run registers the hook after the writer: the
final pass's pictures still reach the event file.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from detectron2.engine import DefaultTrainer
from hook_helpers import decode, image_steps, read_events, small_config, train

from detectron2_hooks import GradCAMHook
from detectron2_hooks.shapes import register_shapes, unregister
from detectron2_hooks.trainer import GradCAMTrainerMixin

ITERS = 5
STEPS = [1, 3, 4]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    name = f"hook_tb_shapes_{os.getpid()}"
    dicts = register_shapes(name, str(tmp_path_factory.mktemp("shapes")), count=4, size=128)
    yield name, dicts
    unregister(name)


class CAMTrainer(GradCAMTrainerMixin, DefaultTrainer):
    pass


@pytest.fixture(scope="module")
def c4_run(shapes, tmp_path_factory):
    name, _ = shapes
    cfg = small_config("c4")
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.SOLVER.BASE_LR = 0.002
    cfg.SOLVER.MAX_ITER = ITERS
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 10_000
    cfg.OUTPUT_DIR = str(tmp_path_factory.mktemp("c4_run"))
    cfg.GRADCAM.PERIOD = 2
    cfg.GRADCAM.NUM_IMAGES = 2
    cfg.GRADCAM.MAX_DETECTIONS = 3
    trainer = CAMTrainer(cfg)
    trainer.train()
    return trainer, read_events(cfg.OUTPUT_DIR)


@pytest.fixture(scope="module")
def retina_run(shapes, tmp_path_factory):
    name, dicts = shapes
    cfg = small_config("retinanet")
    log_dir = str(tmp_path_factory.mktemp("retina_run"))
    hook = GradCAMHook(
        dataset=name,
        num_images=1,
        layer="head.cls_subnet.*",
        methods=("gradcam", "hirescam"),
        period=2,
        max_detections=2,
        cfg=cfg,
    )
    trainer, _ = train(cfg, dicts, ITERS, [hook], log_dir=log_dir, writer_first=False)
    return hook, read_events(log_dir), trainer


def test_mixin_puts_the_hook_before_the_writer(c4_run):
    trainer, _ = c4_run
    names = [type(h).__name__ for h in trainer._hooks]
    assert isinstance(trainer.gradcam_hook, GradCAMHook)
    assert names.index("GradCAMHook") < names.index("PeriodicWriter")
    assert trainer.gradcam_hook.layers == ("roi_heads.res5",)  # GRADCAM.LAYER "" = default


@pytest.mark.parametrize("run", ["c4_run", "retina_run"])
def test_image_tags_at_the_expected_steps(run, request):
    events = request.getfixturevalue(run)[1]
    steps = image_steps(events)
    images = 2 if run == "c4_run" else 1
    methods = ("gradcam", "gradcam++") if run == "c4_run" else ("gradcam", "hirescam")
    pictures = ("detections", *methods, *(f"{m}/filmstrip" for m in methods))
    expected = {f"gradcam/image_{i:02d}/{what}" for i in range(images) for what in pictures}
    assert set(steps) == expected
    for tag, tag_steps in steps.items():
        assert tag_steps == STEPS, tag  # every pass, the last iteration's included


@pytest.mark.parametrize("run", ["c4_run", "retina_run"])
def test_final_images_decode_and_equal_what_the_hook_drew(run, request):
    owner, events = request.getfixturevalue(run)[:2]
    hook = owner.gradcam_hook if run == "c4_run" else owner
    for tag, picture in hook.latest_images.items():
        final = events.Images(tag)[-1]
        assert final.step == ITERS - 1
        decoded = decode(final.encoded_image_string)[:, :, ::-1]  # cv2 gives BGR
        np.testing.assert_array_equal(decoded, picture)


@pytest.mark.parametrize("run", ["c4_run", "retina_run"])
def test_scalars_of_every_pass_sit_beside_detectron2s_own(run, request):
    # c4: DefaultTrainer's writer period is 20, so passes 1 and 3 are flushed by the hook.
    events = request.getfixturevalue(run)[1]
    scalars = events.Tags()["scalars"]
    assert "total_loss" in scalars  # detectron2's, in the same run
    for index in range(2 if run == "c4_run" else 1):
        counts = events.Scalars(f"gradcam/image_{index:02d}/num_detections")
        assert [s.step for s in counts] == STEPS
        assert all(0 <= s.value <= 3 for s in counts)


def test_retinanet_strip_has_one_column_per_subnet_layer(retina_run):
    hook = retina_run[0]
    assert hook.layers == tuple(f"head.cls_subnet.{i}" for i in range(8))
    detections = int(hook.history[-1]["scalars"]["gradcam/image_00/num_detections"])
    assert detections >= 1
    tile_h, tile_w = hook.latest_images["gradcam/image_00/detections"].shape[:2]
    strip = hook.latest_images["gradcam/image_00/hirescam"]
    pad = 2
    assert strip.shape[1] == 8 * tile_w + 7 * pad
    assert strip.shape[0] == detections * tile_h + (detections - 1) * pad


@pytest.mark.parametrize("run", ["c4_run", "retina_run"])
def test_film_strip_gains_one_column_per_pass(run, request):
    """The film strip in the event file: the input column, then one column per pass so far
    (iterations as columns), at least one tracked detection per row."""
    owner, events = request.getfixturevalue(run)[:2]
    hook = owner.gradcam_hook if run == "c4_run" else owner
    for method in hook.methods:
        tag = f"gradcam/image_00/{method}/filmstrip"
        logged = events.Images(tag)
        assert [e.step for e in logged] == STEPS
        widths = [decode(e.encoded_image_string).shape[1] for e in logged]
        # grid: ncols cells of equal width with 2-px gaps
        column = widths[1] - widths[0]
        assert column > 0 and widths[2] - widths[1] == column
        assert widths[0] == 2 * column - 2  # input + first pass
        strip = hook.latest_images[tag]
        tile = strip.shape[1] // 4
        assert strip.shape[0] >= tile // 2  # at least one row


def test_hook_registered_after_the_writer_still_gets_its_final_pictures_written(shapes, tmp_path):
    # register_hooks([PeriodicWriter, GradCAMHook]): the writer writes first in every step and
    # closes in after_train; the hook does not reorder the trainer's hooks, and the last pass's
    # pictures are written by the writer's final write, at the last step.
    name, dicts = shapes
    cfg = small_config("retinanet")
    hook = GradCAMHook(dataset=name, num_images=1, period=0, max_detections=1, cfg=cfg)
    train(cfg, dicts, 3, [hook], log_dir=str(tmp_path), writer_first=True)
    events = read_events(str(tmp_path))
    steps = image_steps(events)
    methods = ("gradcam", "gradcam++")
    pictures = ("detections", *methods, *(f"{m}/filmstrip" for m in methods))
    assert set(steps) == {f"gradcam/image_00/{w}" for w in pictures}
    for tag, picture in hook.latest_images.items():
        assert steps[tag] == [2], tag
        decoded = decode(events.Images(tag)[-1].encoded_image_string)[:, :, ::-1]
        np.testing.assert_array_equal(decoded, picture)
