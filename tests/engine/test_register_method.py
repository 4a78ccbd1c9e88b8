"""``register_method``: one call, and a new weighting works in all six entry points
(CAMEngine, GradCAMCallback, lightning-gradcam, DetectionCAM, GradCAMHook, detectron2-gradcam),
checked through what a user sees; and the registry's own checks and docs table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import cv2
import pytest
import torch

import lightning_gradcam
from lightning_gradcam import CAMEngine, register_method, unregister_method
from lightning_gradcam.core.methods import (
    BUILTIN_METHODS,
    check_methods,
    get_method,
    hirescam,
    method_names,
    methods_table,
    normalize_maps,
    upsample_maps,
)

from .nets import GapNet, seeded, tiny_images

TESTS = Path(__file__).resolve().parents[1]
for _folder in ("lightning", "detectron2", "cli"):  # their helper modules, imported by name
    if str(TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(TESTS / _folder))

NAME = "double_hirescam"
LABEL = "2x HiResCAM"


def double_hirescam(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``L = 2 sum_c G_c A_c``: not a built-in, and its normalised maps equal HiResCAM's,
    which gives the detectors a reference."""
    return 2 * (gradient * activation).sum(dim=1)


@pytest.fixture(scope="module")
def registered():
    entry = register_method(NAME, double_hirescam, label=LABEL)
    yield entry
    unregister_method(NAME)


# --- the registry itself ------------------------------------------------------------------


def test_registering_adds_one_entry_and_unregistering_removes_it():
    assert "energy" not in method_names()
    entry = register_method("energy", double_hirescam)
    try:
        assert entry == get_method("energy")
        assert (entry.label, entry.suffix, entry.guided, entry.detectors) == (
            "energy",
            "-energy",
            False,
            True,
        )
        assert method_names()[-1] == "energy" and "energy" in method_names(detectors=True)
        assert lightning_gradcam.CAMMethod is type(entry)
    finally:
        unregister_method("energy")
    assert "energy" not in method_names()
    with pytest.raises(ValueError, match="unknown CAM method.*'energy'"):
        check_methods(("gradcam", "energy"))


@pytest.mark.parametrize(
    "name, weighting, error, message",
    [
        ("gradcam", double_hirescam, ValueError, "'gradcam' is already registered"),
        ("", double_hirescam, ValueError, "non-empty string"),
        ("a/b", double_hirescam, ValueError, "non-empty string.*'a/b'"),
        ("a,b", double_hirescam, ValueError, "'a,b'"),
        ("two words", double_hirescam, ValueError, "'two words'"),
        (3, double_hirescam, ValueError, "got 3"),
        ("ok", "not a function", TypeError, "must be a callable.*got str"),
        ("ok", lambda a: a.sum(1), TypeError, "failed on activation and gradient"),
        ("ok", lambda a, g: a * g, TypeError, r"\(2, 4, 5\).*got \(2, 3, 4, 5\)"),
        ("ok", lambda a, g: (a * g).sum(1).long(), TypeError, "float tensor"),
        ("ok", lambda a, g: 1.0, TypeError, "got float"),
    ],
)
def test_bad_registrations_are_refused_and_leave_the_registry_unchanged(
    name, weighting, error, message
):
    before = method_names()
    with pytest.raises(error, match=message):
        register_method(name, weighting)
    assert method_names() == before


def test_built_ins_cannot_be_removed_nor_unknown_names():
    with pytest.raises(ValueError, match="built in"):
        unregister_method("gradcam")
    with pytest.raises(ValueError, match="not registered"):
        unregister_method("nonesuch")
    assert method_names() == BUILTIN_METHODS


def test_detectors_are_offered_only_what_they_accept():
    with pytest.raises(ValueError, match="need guided backpropagation") as info:
        check_methods(("gradcam", "guided_gradcam"), detectors=True)
    offered = str(info.value).split("choose from ")[1]
    assert "guided" not in offered and "hirescam" in offered
    with pytest.raises(ValueError, match="unknown") as info:
        check_methods("scorecam", detectors=True)
    assert "guided" not in str(info.value)


def test_docs_methods_table_is_up_to_date():
    text = (TESTS.parent / "docs" / "methods.md").read_text()
    match = re.search(
        r"<!-- methods-table:start -->\n(.*)<!-- methods-table:end -->", text, flags=re.S
    )
    assert match, "docs/methods.md lost its methods-table markers"
    assert match[1] == methods_table(), (
        "docs/methods.md is stale: put lightning_gradcam.core.methods.methods_table() "
        "between its markers"
    )


# --- the six entry points -----------------------------------------------------------------


def test_cam_engine_maps_equal_the_weighting_by_hand(registered):
    """GAP + linear: the gradient at ``features`` is ``w_kc / (h w)`` everywhere, so the new
    map is ``relu(2 sum_c w_kc A_c / (h w))``."""
    model = seeded(GapNet, seed=3).eval()
    images = tiny_images(batch=2, size=12, seed=4)
    res = CAMEngine(model, layer="features", methods=("gradcam", NAME)).explain(images, [1, 3])
    with torch.no_grad():
        activation = model.features(images)
    h, w = activation.shape[-2:]
    weights = model.fc.weight[[1, 3]] / (h * w)  # (B, C)
    by_hand = torch.relu(2 * (weights[:, :, None, None] * activation).sum(dim=1))
    torch.testing.assert_close(res.layer_maps[NAME][:, 0], by_hand, rtol=1e-5, atol=1e-6)
    expected = normalize_maps(upsample_maps(by_hand, (12, 12)))
    torch.testing.assert_close(res.maps[NAME][:, 0], expected, rtol=1e-5, atol=1e-6)
    assert (res.maps[NAME].amax(dim=(-2, -1)) > 0.99).all()  # real maps, not flat ones


def test_gradcam_callback_logs_the_new_method(registered, tmp_path):
    import pytorch_lightning as pl
    from cam_events import make_trainer, read_events
    from cam_tiny import LAYER, TinyPL, val_loader

    from lightning_gradcam import GradCAMCallback

    cb = GradCAMCallback(layer=LAYER, methods=("gradcam", NAME), num_samples=2)
    trainer = make_trainer(pl, tmp_path, [cb], max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(TinyPL(), val_dataloaders=val_loader(num_images=4, batch_size=4))
    images, scalars = read_events(tmp_path / "tb")
    prefix = f"gradcam/{LAYER}/{NAME}"
    assert {f"{prefix}/sample_00", f"{prefix}/sample_01", f"{prefix}/grid"} <= set(images)
    assert f"{prefix}/drift_vs_prev" in scalars
    assert cb.filmstrip(NAME).ndim == 3


def test_lightning_gradcam_command_writes_the_new_method(registered, tmp_path, capsys):
    from cli_weights import random_state_dict

    from lightning_gradcam.cli import build_parser, main

    assert NAME in build_parser().format_help()
    weights = tmp_path / "net.pth"
    network = "shufflenet_v2_x1_0"
    torch.save(random_state_dict(network), weights)
    out = tmp_path / "out"
    argv = ["--network", network, "--weight-path", weights, "--input-size", 64]
    argv += ["--methods", f"gradcam,{NAME}", "--format", "grid", "--output-dir", out]
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err
    kinds = ("heatmap", "cam", f"heatmap-{NAME}", f"cam-{NAME}", "grid")
    assert {p.name for p in out.iterdir()} == {f"sample-{network}-{k}.png" for k in kinds}
    for kind in kinds:
        assert cv2.imread(str(out / f"sample-{network}-{kind}.png")) is not None


def test_detection_cam_maps_of_the_new_method(registered):
    from d2_helpers import build, make_inputs

    from detectron2_hooks import Detectron2CAM

    model = build("c4")
    cam = Detectron2CAM(model, methods=("hirescam", NAME))
    detections = cam.explain(make_inputs(1), max_detections=3)[0]
    assert detections
    for det in detections:
        assert det.maps[NAME].shape == det.maps["hirescam"].shape
        # twice HiResCAM normalises to HiResCAM: the registered weighting ran per detection
        torch.testing.assert_close(det.maps[NAME], det.maps["hirescam"], rtol=1e-4, atol=1e-5)
    assert get_method(NAME).weighting is double_hirescam
    assert hirescam is get_method("hirescam").weighting


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from hook_helpers import shapes_dataset

    with shapes_dataset("register_method", str(tmp_path_factory.mktemp("shapes")), 2) as data:
        yield data


def test_gradcam_hook_logs_the_new_method(registered, shapes, tmp_path):
    from hook_helpers import read_events, small_config, train

    from detectron2_hooks import GradCAMHook

    name, dicts = shapes
    cfg = small_config("c4")
    cfg.GRADCAM.METHODS = [NAME]
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    hook = GradCAMHook.from_config(cfg)
    assert hook.methods == (NAME,)
    hook.period, hook.num_images = 0, 1  # one pass, at the last iteration
    train(cfg, dicts, 2, [hook], log_dir=str(tmp_path))
    tags = read_events(str(tmp_path)).Tags()["images"]
    assert f"gradcam/image_00/{NAME}" in tags
    assert hook.latest_images[f"gradcam/image_00/{NAME}"].ndim == 3


def test_detector_config_refuses_guided_methods_offering_the_new_one(registered):
    from hook_helpers import small_config

    from detectron2_hooks.config import config_methods

    cfg = small_config("c4")
    cfg.GRADCAM.METHODS = ["gradcam", "guided_gradcam"]
    with pytest.raises(ValueError, match="cfg.GRADCAM.METHODS: guided_gradcam need") as info:
        config_methods(cfg)
    offered = str(info.value).split("choose from ")[1]
    assert NAME in offered and "guided" not in offered


def test_detectron2_gradcam_command_writes_the_new_method(registered, tmp_path, capsys):
    from d2_helpers import build

    from detectron2_hooks import cli
    from detectron2_hooks.tiny import tiny_config
    from lightning_gradcam.io import sample_image, write_images

    assert NAME in cli.build_parser().format_help()
    config, weights, image = tmp_path / "c4.yaml", tmp_path / "c4.pth", tmp_path / "scene.png"
    config.write_text(tiny_config("c4", cam=False).dump())
    torch.save({"model": build("c4").state_dict()}, weights)
    write_images({image: sample_image(160, seed=1)})
    out = tmp_path / "out"

    def command(*methods: str) -> int:
        argv = ["--config-file", config, "--input", image, "--max-detections", 1]
        argv += ["--output-dir", out, "--methods", *methods]
        argv += ["--opts", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]
        return cli.main([str(a) for a in argv])

    status = command("gradcam", NAME)
    assert status == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    ours = [n for n in names if n.endswith(f"-{NAME}.png")]
    assert len(ours) == 1 and ours[0].startswith("scene-det00-"), names
    assert ours[0].replace(NAME, "gradcam") in names
    assert cv2.imread(str(out / ours[0])) is not None

    status = command("gradcam", "guided_backprop")
    err = capsys.readouterr().err
    assert status == 2 and "guided_backprop need guided backpropagation" in err
    assert NAME in err.split("choose from ")[1] and "guided" not in err.split("choose from ")[1]
