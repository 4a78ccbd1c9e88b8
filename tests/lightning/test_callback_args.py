"""GradCAMCallback validates its arguments in __init__ and the layer/strategy at on_fit_start."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as lp
import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer
from cam_tiny import LAYER, TinyPL, val_loader

from lightning_gradcam import GradCAMCallback, LayerNotFoundError
from lightning_gradcam.lightning.compat import sharded_strategy_name


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"methods": ("gradcam", "scorecam")}, ValueError, "unknown CAM method.*'scorecam'"),
        ({"methods": ()}, ValueError, "methods is empty"),
        ({"num_samples": 0}, ValueError, "num_samples must be an integer >= 1"),
        ({"every_n_epochs": 1.5}, ValueError, "every_n_epochs must be an integer >= 1"),
        ({"every_n_epochs": True}, ValueError, "every_n_epochs must be an integer"),
        ({"colormap": "rainbowz"}, ValueError, "unknown colour map 'rainbowz'; choose from jet"),
        ({"alpha": 1.5}, ValueError, r"alpha must be a number in \[0, 1\]"),
        ({"target": "labels"}, ValueError, "target 'labels' is not a policy; use one of auto"),
        ({"target": -1}, ValueError, "target class id must be >= 0"),
        ({"target": [0.5, 1.0]}, ValueError, "one integer class id per image"),
        ({"target": 2.0}, TypeError, "target must be 'auto'"),
        ({"layer": ""}, ValueError, "layer must be a dotted module name"),
        ({"tag_prefix": "/"}, ValueError, "tag_prefix must be a non-empty string"),
        ({"max_image_size": 4}, ValueError, "max_image_size must be an integer >= 16"),
        ({"filmstrip_size": 0}, ValueError, "filmstrip_size must be an integer >= 16"),
        ({"std": (0.2, 0.0, 0.2)}, ValueError, "std must be positive"),
        ({"mean": (0.5, 0.5), "std": (0.2, 0.2, 0.2)}, ValueError, "mean has 2 channels"),
        ({"mean": "abc"}, ValueError, "mean must be a sequence of per-channel floats"),
        ({"batch_parser": 3}, TypeError, "batch_parser must be callable"),
        ({"class_names": "abc"}, ValueError, "class_names must be a sequence of strings"),
        ({"labels": [0, 1]}, ValueError, "pass images too"),
        (
            {"images": torch.rand(2, 3, 8, 8), "target": [0, 1, 2]},
            ValueError,
            "target gives 3 class ids but 2 images",
        ),
        (
            {"images": torch.rand(2, 3, 8, 8), "target": "label"},
            ValueError,
            "target='label' but the images come without labels",
        ),
        (
            {"images": torch.rand(2, 3, 8, 8), "mean": (0.5, 0.5)},
            ValueError,
            "mean has 2 values but the images have 3 channels",
        ),
        ({"images": torch.rand(3, 8, 8)}, ValueError, r"\(N, C, H, W\)"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs, error, message):
    with pytest.raises(error, match=message):
        GradCAMCallback(**kwargs)


def test_good_arguments_are_kept():
    cb = GradCAMCallback(
        layer="net.x",
        methods="layercam",
        target=[0, 2],
        images=torch.rand(4, 3, 8, 8),
        num_samples=2,
        tag_prefix="/cams/",
    )
    assert cb.methods == ("layercam",)
    assert cb.options.target.tolist() == [0, 2]
    # the first num_samples of the images given
    assert len(cb.state_dict()["samples"]["images"]) == 2
    assert cb.tag_prefix == "cams"


def test_the_class_is_a_callback_for_both_packages():
    cb = GradCAMCallback()
    assert isinstance(cb, pl.Callback) and isinstance(cb, lp.Callback)


def test_wrong_layer_fails_before_the_first_training_step(tmp_path):
    module = TinyPL()
    trainer = make_trainer(pl, tmp_path, [GradCAMCallback(layer="net.features.blok2")])
    with pytest.raises(LayerNotFoundError, match="Closest names: 'net.features.block2'"):
        trainer.fit(module, val_dataloaders=val_loader())
    assert module.train_steps == 0
    assert trainer.global_step == 0


def test_two_callbacks_have_distinct_state_keys():
    a, b = GradCAMCallback(layer=LAYER), GradCAMCallback(layer="net.features.block1")
    assert a.state_key != b.state_key


@pytest.mark.parametrize("package", [pl, lp])
def test_sharded_strategies_are_recognised(package):
    assert sharded_strategy_name(package.strategies.FSDPStrategy()) == "FSDPStrategy"
    assert sharded_strategy_name(package.strategies.DDPStrategy()) is None

    class MyDeepSpeed(package.strategies.DeepSpeedStrategy):  # never instantiated: needs deepspeed
        pass

    fake = MyDeepSpeed.__new__(MyDeepSpeed)
    assert sharded_strategy_name(fake) == "DeepSpeedStrategy"


def test_sharded_strategy_is_refused_at_fit_start():
    # FSDP needs a GPU to build a Trainer; on_fit_start only looks at trainer.strategy.
    trainer = SimpleNamespace(strategy=pl.strategies.FSDPStrategy())
    with pytest.raises(RuntimeError, match="does not support the sharded strategy FSDPStrategy"):
        GradCAMCallback(layer=LAYER).on_fit_start(trainer, TinyPL())


def test_a_target_outside_the_head_fails_after_the_sanity_check_before_training(tmp_path):
    module = TinyPL()
    trainer = make_trainer(pl, tmp_path, [GradCAMCallback(layer=LAYER, target=7)])
    with pytest.raises(ValueError, match="class id 7 is outside the model's 3 classes") as caught:
        trainer.fit(module, val_dataloaders=val_loader())
    assert any("trial CAM pass" in note for note in getattr(caught.value, "__notes__", []))
    assert module.train_steps == 0
    assert trainer.global_step == 0


def test_passed_images_are_tried_at_fit_start_even_without_a_sanity_check(tmp_path):
    images = torch.rand(4, 3, 32, 32)
    callback = GradCAMCallback(layer=LAYER, images=images, target=lambda out: out[:, :2])
    module = TinyPL()
    trainer = make_trainer(pl, tmp_path, [callback], num_sanity_val_steps=0)
    with pytest.raises(ValueError, match="returned 2 scores per image"):
        trainer.fit(module, val_dataloaders=val_loader())
    assert module.train_steps == 0
