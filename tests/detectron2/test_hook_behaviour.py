"""GradCAMHook without a training loop: arguments, images taken, no detections, matching,
drift, config, main process, wrappers. Hook methods are called on a stand-in trainer."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from detectron2.engine import hooks
from detectron2.modeling import build_model
from detectron2.utils.events import TensorboardXWriter
from hook_helpers import MIN_SIZE, fake_trainer, read_events, small_config

from detectron2_hooks import GradCAMHook, add_gradcam_config
from detectron2_hooks.shapes import register_shapes, unregister
from detectron2_hooks.trainer import insert_before_writers
from lightning_gradcam.core.drift import energy_in_boxes, map_drift
from lightning_gradcam.core.layers import LayerNotFoundError
from lightning_gradcam.core.render import caption
from lightning_gradcam.pictures import input_picture


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    name = f"hook_bh_shapes_{os.getpid()}"
    dicts = register_shapes(name, str(tmp_path_factory.mktemp("shapes")), count=3, size=128)
    yield name, dicts
    unregister(name)


@pytest.fixture(scope="module")
def c4_model():
    torch.manual_seed(0)
    return build_model(small_config("c4")).train()


@pytest.fixture(scope="module")
def silent_model():
    """Detects nothing: no softmax probability exceeds a threshold of 1."""
    torch.manual_seed(0)
    return build_model(small_config("c4", score_thresh=1.0)).train()


def started(hook: GradCAMHook, model, iteration: int = 0, max_iter: int = 100) -> GradCAMHook:
    hook.trainer = fake_trainer(model, iteration, max_iter)
    hook.before_train()
    return hook


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one image source"),
        ({"inputs": [{}], "dataset": "x"}, "exactly one image source"),
        ({"dataset": "x", "period": -1}, "period must be an integer >= 0"),
        ({"dataset": "x", "max_detections": 0}, "max_detections must be an integer >= 1"),
        ({"dataset": "x", "methods": ("guided_gradcam",)}, "need guided backpropagation"),
        ({"dataset": "x", "methods": ("gradcan",)}, "unknown CAM method"),
        ({"dataset": "x", "match_iou": 0.0}, "match_iou must be in (0, 1]"),
        ({"dataset": "x", "writers": [object()]}, "writers must be detectron2 event writers"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        GradCAMHook(**kwargs)


def test_wrong_layer_fails_in_before_train_with_close_matches(shapes, c4_model):
    hook = GradCAMHook(dataset=shapes[0], layer="roi_heads.res6", cfg=small_config("c4"))
    with pytest.raises(
        LayerNotFoundError, match=r"no layer named 'roi_heads.res6'.*'roi_heads.res5'"
    ):
        started(hook, c4_model)


def test_unknown_dataset_names_the_registered_ones(shapes, c4_model):
    hook = GradCAMHook(dataset="no_such_set", cfg=small_config("c4"))
    with pytest.raises(ValueError, match=rf"'no_such_set' is not registered.*{shapes[0]}"):
        started(hook, c4_model)


def test_dataset_dicts_without_a_config_ask_for_cfg(shapes, c4_model):
    with pytest.raises(ValueError, match="pass cfg="):
        started(GradCAMHook(dataset=shapes[0]), c4_model)


# ---------------------------------------------------------------- images taken


def test_dataset_images_go_through_the_test_time_mapper_without_rng_draws(shapes, c4_model):
    name, dicts = shapes
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    hook = started(GradCAMHook(dataset=name, num_images=2, cfg=small_config("c4")), c4_model)
    # ResizeShortestEdge draws from NumPy even with one size; the hook restores the streams.
    assert torch.equal(states[0], torch.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1])
    assert states[2] == random.getstate()
    assert len(hook.inputs) == 2
    for item, source in zip(hook.inputs, dicts):
        assert tuple(item["image"].shape) == (3, MIN_SIZE, MIN_SIZE)  # 128 px resized for test
        assert item["file_name"] == source["file_name"] and "instances" not in item
    assert hook.class_names == ["circle", "square", "triangle"]  # the dataset's metadata


def test_model_inputs_are_used_as_given(c4_model):
    image = torch.randint(0, 255, (3, 80, 100)).float()
    hook = started(GradCAMHook(inputs=[{"image": image}] * 3, num_images=2), c4_model)
    assert len(hook.inputs) == 2 and torch.equal(hook.inputs[0]["image"], image)


def test_dataparallel_wrapper_is_unwrapped(shapes, c4_model):
    hook = GradCAMHook(dataset=shapes[0], num_images=1, cfg=small_config("c4"))
    started(hook, torch.nn.DataParallel(c4_model))
    # the default layer and its name are the detector's own, not "module.roi_heads.res5"
    assert hook.layers == ("roi_heads.res5",)
    with hook.trainer.storage:
        (detections,) = hook.run()
    # Maps in the pixels detectron2 reports detections in: the dataset image's own 128 px
    # (the mapper's height/width), not the 96 px the model saw.
    item = hook.inputs[0]
    assert tuple(item["image"].shape[-2:]) == (MIN_SIZE, MIN_SIZE)
    assert detections and detections[0].maps["gradcam"].shape[-2:] == (
        item["height"],
        item["width"],
    )
    assert (item["height"], item["width"]) == (128, 128)


def _written(storage, log_dir):
    """What detectron2's TensorboardXWriter writes from ``storage`` now, read back."""
    writer = TensorboardXWriter(str(log_dir))
    with storage:
        writer.write()
    writer.close()
    return read_events(str(log_dir))


def test_other_processes_do_nothing(shapes, c4_model, monkeypatch, tmp_path):
    monkeypatch.setattr("detectron2.utils.comm.is_main_process", lambda: False)
    hook = started(GradCAMHook(dataset=shapes[0], period=1, cfg=small_config("c4")), c4_model)
    with hook.trainer.storage as storage:
        hook.after_step()
    assert not hook.enabled and not hook.inputs and not hook.layers
    events = _written(storage, tmp_path)
    assert events.Tags()["images"] == [] and not hook.history and not hook.latest_images


# ---------------------------------------------------------------- when, and no detections


def test_passes_every_period_and_at_the_last_iteration(shapes, c4_model, monkeypatch):
    hook = started(GradCAMHook(dataset=shapes[0], period=3, cfg=small_config("c4")), c4_model)
    calls = []
    monkeypatch.setattr(hook, "run", lambda: calls.append(hook.trainer.iter))
    hook.trainer.max_iter = 8
    for iteration in range(8):
        hook.trainer.iter = iteration
        hook.after_step()
    assert calls == [2, 5, 7]


def test_no_detections_logs_the_captioned_input(shapes, silent_model, tmp_path):
    cfg = small_config("c4", score_thresh=1.0)
    hook = started(GradCAMHook(dataset=shapes[0], num_images=2, cfg=cfg), silent_model, 6)
    with hook.trainer.storage as storage:
        results = hook.run()
    assert results == [[], []]
    assert silent_model.training
    expected = [
        f"gradcam/image_{i:02d}/{what}"
        for i in range(2)
        for what in (
            "detections",
            "gradcam",
            "gradcam++",
            "gradcam/filmstrip",  # one row: "no detections yet", a black cell for this pass
            "gradcam++/filmstrip",
        )
    ]
    assert list(hook.latest_images) == expected
    assert sorted(_written(storage, tmp_path).Tags()["images"]) == sorted(expected)
    for index in range(2):
        picture = hook.latest_images[f"gradcam/image_{index:02d}/detections"]
        item = hook.inputs[index]  # drawn in the dataset image's pixels (its height/width)
        source = input_picture(item["image"], "BGR", (item["height"], item["width"]))
        height = source.shape[0]
        assert picture.shape[0] > height  # a caption band under the input
        np.testing.assert_array_equal(picture[:height], source)
        # the caption says why, drawn as render.caption draws it (whose text is measured
        # by contrast in tests/engine/test_render.py: pixel levels vary with OpenCV)
        np.testing.assert_array_equal(picture, caption(source, "iter 6: no detections above 1"))
        assert hook.latest_images[f"gradcam/image_{index:02d}/gradcam"] is picture
    # No detection: every region scalar is still written (a monitor finds it): nothing in a
    # box, no hit, no map with evidence.
    expected = {}
    for index in range(2):
        expected[f"gradcam/image_{index:02d}/num_detections"] = 0.0
        for method in hook.methods:
            base = f"gradcam/image_{index:02d}/{method}"
            expected |= {f"{base}/energy_in_box": 0.0, f"{base}/pointing_game": 0.0}
            expected[f"{base}/no_evidence_rate"] = 1.0
    assert hook.history[-1] == {"iter": 6, "scalars": expected}
    for name, (value, step) in storage.latest().items():
        assert step == 6 and value == expected[name], name


# ---------------------------------------------------------------- matching and drift


def test_drift_and_energy_scalars_follow_the_detections_of_each_pass(shapes, c4_model):
    # Matching by class and overlap is tested on the tracker (tests/engine/test_tracking.py);
    # here: the hook feeds it each image's detections and writes what it gives.
    hook = started(GradCAMHook(dataset=shapes[0], num_images=1, cfg=small_config("c4")), c4_model)
    with hook.trainer.storage:
        (detections,) = hook.run()
        assert detections, "the tiny C4 model should detect something at its threshold"
        first = hook.history[-1]["scalars"]
        assert "gradcam/image_00/gradcam/drift_vs_prev" not in first  # nothing to compare yet
        maps = torch.stack([det.maps["gradcam"] for det in detections])
        boxes = torch.stack([det.box for det in detections])
        energy = float(energy_in_boxes(maps, boxes).mean())
        assert first["gradcam/image_00/gradcam/energy_in_box"] == pytest.approx(energy)
        (again,) = hook.run()  # the same model: the same detections, matched one to one
    second = hook.history[-1]["scalars"]
    assert len(again) == len(detections)
    for method in ("gradcam", "gradcam++"):
        for name in ("drift_vs_prev", "drift_vs_first"):
            value = second[f"gradcam/image_00/{method}/{name}"]
            assert value == pytest.approx(0.0, abs=1e-5)
    assert float(map_drift(maps, maps).mean()) == pytest.approx(0.0, abs=1e-6)
    assert second["gradcam/image_00/num_detections"] == float(len(detections))


# ---------------------------------------------------------------- config


def test_from_config_reads_the_gradcam_keys(shapes):
    cfg = small_config("retinanet")
    cfg.DATASETS.TRAIN = (shapes[0],)
    cfg.GRADCAM.LAYER = "head.cls_subnet.1, head.cls_subnet.3"
    cfg.GRADCAM.METHODS = ["gradcam", "hirescam"]
    cfg.GRADCAM.PERIOD = 7
    cfg.GRADCAM.NUM_IMAGES = 2
    cfg.GRADCAM.MAX_DETECTIONS = 4
    hook = GradCAMHook.from_config(cfg)
    assert hook.layer == ("head.cls_subnet.1", "head.cls_subnet.3")
    assert hook.methods == ("gradcam", "hirescam")
    assert (hook.period, hook.num_images, hook.max_detections) == (7, 2, 4)
    assert hook.dataset == shapes[0] and hook.cfg is cfg
    cfg.GRADCAM.ENABLED = False
    assert GradCAMHook.from_config(cfg) is None


def test_from_config_without_the_node_says_how_to_add_it():
    from detectron2.config import get_cfg

    with pytest.raises(ValueError, match="add_gradcam_config"):
        GradCAMHook.from_config(get_cfg())
    assert GradCAMHook.from_config(add_gradcam_config(get_cfg()), dataset="d").dataset == "d"


def test_insert_before_writers(tmp_path):
    writer = hooks.PeriodicWriter([TensorboardXWriter(str(tmp_path))])
    timer, hook = hooks.IterationTimer(), GradCAMHook(dataset="d")
    assert insert_before_writers([timer, None, writer], hook) == [timer, None, hook, writer]
    assert insert_before_writers([timer], hook) == [timer, hook]
    assert insert_before_writers([timer, writer], None) == [timer, writer]


def test_a_layer_the_scores_never_reach_fails_in_before_train(shapes, c4_model):
    # The RPN head runs, but proposals are detached: box scores have no gradient there.
    hook = GradCAMHook(
        dataset=shapes[0], layer="proposal_generator.rpn_head.conv", cfg=small_config("c4")
    )
    with pytest.raises(ValueError, match="scores do not depend on layer .proposal_generator"):
        started(hook, c4_model)
    assert c4_model.training
