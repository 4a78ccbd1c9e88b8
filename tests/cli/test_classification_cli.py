"""End-to-end tests of `lightning-gradcam` on generated images and random-weight checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_weights import random_state_dict

from lightning_gradcam.cli import DEFAULT_METHODS, main
from lightning_gradcam.core.render import heatmap
from lightning_gradcam.explain_image import picture_suffixes
from lightning_gradcam.io import read_image, sample_image, write_images
from lightning_gradcam.models.networks import SEED_NETWORKS, prepare_network, pretrained_cache_path

SMALL = "shufflenet_v2_x1_0"  # the fastest of the eight
KINDS = [kind for method in DEFAULT_METHODS for kind in picture_suffixes(method)]
ERROR_PREFIX = "lightning-gradcam: error: "


def decode(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path} does not decode"
    return image


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- all eight networks, one invocation -------------------------------------------------


@pytest.fixture(scope="module")
def eight_networks_run(checkpoints, tmp_path_factory):
    """One command over the seed's eight networks, one image, with a grid sheet each."""
    out_dir = tmp_path_factory.mktemp("eight")
    (out_dir / "keep.txt").write_text("an unrelated file")
    image = tmp_path_factory.mktemp("one") / "photo.png"
    write_images({image: sample_image(100, seed=3)})
    argv = ["--image-path", image, "--network", *SEED_NETWORKS, "--weight-path"]
    argv += [checkpoints[n] for n in SEED_NETWORKS]
    argv += ["--input-size", 80, "--format", "grid", "--output-dir", out_dir]
    code = main([str(a) for a in argv])
    return code, out_dir, image


def test_eight_networks_write_every_picture_at_the_input_size(eight_networks_run, capfd):
    code, out_dir, _ = eight_networks_run
    assert code == 0
    assert (out_dir / "keep.txt").read_text() == "an unrelated file"
    expected = {f"photo-{n}-{k}.png" for n in SEED_NETWORKS for k in [*KINDS, "grid"]}
    assert expected | {"keep.txt"} == {p.name for p in out_dir.iterdir()}
    for network in SEED_NETWORKS:
        for kind in KINDS:
            assert decode(out_dir / f"photo-{network}-{kind}.png").shape == (80, 80, 3)
        sheet = decode(out_dir / f"photo-{network}-grid.png")
        # input + 7 pictures, 80 px wide with 2 px gaps, a caption band below
        assert sheet.shape[1] == 8 * 80 + 7 * 2 and sheet.shape[0] > 80


def test_eight_networks_use_their_default_layers(checkpoints):
    layers = {n: prepare_network(n, checkpoints[n], input_size=80).layer for n in SEED_NETWORKS}
    assert layers == {
        "vgg16": "features.29",
        "vgg19": "features.35",
        "resnet50": "layer4",
        "resnet101": "layer4",
        "densenet121": "features",
        "inception_v3": "Mixed_7c",
        "mobilenet_v2": "features",
        "shufflenet_v2_x1_0": "conv5",
    }


def test_overlay_is_drawn_on_the_network_view(eight_networks_run):
    _, out_dir, image = eight_networks_run
    spec = prepare_network("resnet50", "random", input_size=80)
    view, _ = spec.preprocess(read_image(image))
    base = (view.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    heat = cv2.cvtColor(decode(out_dir / "photo-resnet50-heatmap.png"), cv2.COLOR_BGR2RGB)
    cam = cv2.cvtColor(decode(out_dir / "photo-resnet50-cam.png"), cv2.COLOR_BGR2RGB)
    blended = base.astype(np.float32) * 0.5 + heat.astype(np.float32) * 0.5
    assert np.abs(cam.astype(np.float32) - blended).max() <= 1.5
    # the heat map is a jet rendering of some map: its pixels lie on the jet colour scale
    scale = heatmap(np.linspace(0, 1, 256)[None, :]).reshape(-1, 3).astype(np.int32)
    distance = np.abs(heat.reshape(-1, 1, 3).astype(np.int32) - scale[None]).sum(-1).min(1)
    assert distance.max() <= 3


# --- behaviour on one small network --------------------------------------------------------


def test_folder_writes_each_image_and_prints_imagenet_classes(
    checkpoints, image_dir, tmp_path, capsys
):
    code, out, err = run_cli(
        capsys, "--image-path", image_dir, "--network", SMALL, "--weight-path",
        checkpoints[SMALL], "--input-size", 64, "--output-dir", tmp_path,
    )  # fmt: skip
    assert code == 0, err
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {f"{s}-{SMALL}-{k}.png" for s in ("scene_a", "scene_b") for k in KINDS}
    lines = [line for line in out.splitlines() if "predicted" in line]
    assert len(lines) == 2
    spec = prepare_network(SMALL, checkpoints[SMALL], input_size=64)
    assert spec.categories is not None and len(spec.categories) == 1000
    assert any(name in lines[0] for name in spec.categories)  # ImageNet names, not bare ids
    assert f"{tmp_path}/scene_a-{SMALL}-*.png" in lines[0]


def test_glob_and_class_id(checkpoints, image_dir, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "--image-path", image_dir / "*.jpg", "--network", SMALL, "--weight-path",
        checkpoints[SMALL], "--input-size", 64, "--output-dir", tmp_path, "--class-id", 7,
        "--methods", "gradcam,layercam",
    )  # fmt: skip
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} == {
        f"scene_b-{SMALL}-{k}.png" for k in ("heatmap", "cam", "heatmap-layercam", "cam-layercam")
    }
    assert "7 cock" in out  # the explained class, by its ImageNet name (unless predicted)


def test_head_with_other_number_of_classes(tmp_path, capsys):
    weights = tmp_path / "three.pth"
    torch.save({"state_dict": random_state_dict(SMALL, num_classes=3)}, weights)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys, "--network", SMALL, "--weight-path", weights, "--input-size", 64,
        "--output-dir", out_dir, "--class-id", 2,
    )  # fmt: skip
    assert code == 0, err
    assert "explained 2" in out or "predicted 2 " in out
    assert len(list(out_dir.glob(f"sample-{SMALL}-*.png"))) == len(KINDS)
    code, _, err = run_cli(
        capsys, "--network", SMALL, "--weight-path", weights, "--class-id", 3,
        "--output-dir", out_dir,
    )  # fmt: skip
    assert code == 2
    assert "class id 3 is outside the 3 classes" in err


def test_old_style_zoo_checkpoint_of_densenet(tmp_path, capsys):
    """torchvision's own densenet121-a639ec97.pth: legacy serialisation, `norm.1` keys,
    no `num_batches_tracked`, as the model zoo published it."""
    state = random_state_dict("densenet121")
    old = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for part in ("norm", "relu", "conv"):
            for index in ("1", "2"):
                key = key.replace(f".{part}{index}.", f".{part}.{index}.")
        old[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(old, path, _use_new_zipfile_serialization=False)
    code, out, err = run_cli(
        capsys, "--network", "densenet121", "--weight-path", path, "--input-size", 64,
        "--output-dir", tmp_path / "out", "--methods", "gradcam",
    )  # fmt: skip
    assert code == 0, err
    assert decode(tmp_path / "out" / "sample-densenet121-cam.png").shape == (64, 64, 3)


def test_pretrained_weights_from_the_hub_cache(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = pretrained_cache_path(SMALL)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(checkpoints[SMALL].read_bytes())
    code, out, err = run_cli(
        capsys, "--network", SMALL, "--input-size", 64, "--output-dir", tmp_path / "out"
    )
    assert code == 0, err
    assert f"torchvision pretrained ({cached})" in out


def test_no_pretrained_weights_stops_naming_weight_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_args, **_kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code, out, err = run_cli(capsys, "--network", SMALL, "--output-dir", tmp_path / "out")
    assert code == 2
    assert err.startswith(ERROR_PREFIX + f"cannot download the pretrained {SMALL} weights")
    assert "--weight-path FILE" in err and "--weight-path random" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_random_weights_only_when_asked_and_with_a_warning(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "--network", SMALL, "--weight-path", "random", "--input-size", 64,
        "--output-dir", tmp_path,
    )  # fmt: skip
    assert code == 0
    assert "random weights" in err and "meaningless" in err
    assert len(list(tmp_path.glob(f"sample-{SMALL}-*.png"))) == len(KINDS)


def test_python_m_runs_the_command(tmp_path):
    argv = ["--network", SMALL, "--weight-path", "random", "--input-size", "64"]
    done = subprocess.run(
        [sys.executable, "-m", "lightning_gradcam", *argv, "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {len(KINDS)} pictures" in done.stdout
    assert len(list(tmp_path.glob(f"sample-{SMALL}-*.png"))) == len(KINDS)


def test_console_script_is_declared_and_points_at_main():
    (entry,) = entry_points(group="console_scripts", name="lightning-gradcam")
    assert entry.load() is main


# --- bad inputs: one line, exit status 2, output folder untouched ----------------------------


def _bad_inputs(tmp: Path, checkpoints: dict[str, Path]) -> dict[str, tuple[list, str]]:
    garbage = tmp / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image should hold")
    mixed = tmp / "mixed"
    write_images({mixed / "good.png": sample_image(64)})
    (mixed / "zz_bad.jpg").write_bytes(b"not a jpeg")
    (tmp / "empty").mkdir()
    resnet = tmp / "resnet50.pth"
    torch.save(random_state_dict("resnet50"), resnet)
    not_state = tmp / "list.pth"
    torch.save([1, 2, 3], not_state)
    junk = tmp / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 2)
    small = ["--network", SMALL, "--weight-path", str(checkpoints[SMALL])]
    return {
        "unreadable image": (
            ["--image-path", garbage, *small],
            f"cannot read image {garbage}: not a decodable image file",
        ),
        "unreadable image in a folder": (
            ["--image-path", mixed, *small],
            f"cannot read image {mixed / 'zz_bad.jpg'}",
        ),
        "missing image": (
            ["--image-path", tmp / "nope.png", *small],
            f"image path {tmp / 'nope.png'} does not exist",
        ),
        "empty folder": (["--image-path", tmp / "empty", *small], "holds no images"),
        "glob without match": (["--image-path", tmp / "*.tif", *small], "matches no file"),
        "missing weights": (
            ["--network", SMALL, "--weight-path", tmp / "nope.pth"],
            f"cannot read weights {tmp / 'nope.pth'}: no such file",
        ),
        "wrong layer": (
            [*small, "--layer-name", "conv9"],
            "ShuffleNetV2 has no layer named 'conv9'. Closest names: 'conv5'",
        ),
        "layer without a feature map": ([*small, "--layer-name", "fc"], "Grad-CAM needs a layer"),
        "class id outside the head": (
            [*small, "--class-id", 1000],
            "class id 1000 is outside the 1000 classes of shufflenet_v2_x1_0's head",
        ),
        "state dict of another network": (
            ["--network", SMALL, "--weight-path", resnet],
            f"the state dict in {resnet} does not fit {SMALL}",
        ),
        "state dict with other shapes": (
            ["--network", "wide_resnet50_2", "--weight-path", resnet],
            "with another shape (e.g. 'layer1.0.conv1.weight' is 64x64x1x1, wide_resnet50_2 "
            "has 128x64x1x1)",
        ),
        "not a state dict": (
            ["--network", SMALL, "--weight-path", not_state],
            "holds a list, not a state dict",
        ),
        "not a torch file": (
            ["--network", SMALL, "--weight-path", junk],
            f"cannot read weights {junk}: not a PyTorch state-dict file",
        ),
        "unknown network": (["--network", "resnet5", "--weight-path", "random"], "resnet50"),
        "input too small": (
            [
                "--network",
                "inception_v3",
                "--weight-path",
                checkpoints["inception_v3"],
                "--input-size",
                40,
            ],
            "inception_v3 cannot run on a 40x40 input",
        ),  # fmt: skip
    }


BAD_CASES = [
    "unreadable image",
    "unreadable image in a folder",
    "missing image",
    "empty folder",
    "glob without match",
    "missing weights",
    "wrong layer",
    "layer without a feature map",
    "class id outside the head",
    "state dict of another network",
    "state dict with other shapes",
    "not a state dict",
    "not a torch file",
    "unknown network",
    "input too small",
]


@pytest.fixture(scope="module")
def bad_inputs(checkpoints, tmp_path_factory):
    return _bad_inputs(tmp_path_factory.mktemp("bad"), checkpoints)


@pytest.fixture
def populated_output(tmp_path) -> Path:
    out_dir = tmp_path / "results"
    write_images({out_dir / f"old-{SMALL}-cam.png": sample_image(32)})
    (out_dir / "notes.txt").write_text("keep me")
    return out_dir


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_exit_2(case, bad_inputs, populated_output, capsys):
    argv, message = bad_inputs[case]
    before = snapshot(populated_output)
    code, out, err = run_cli(capsys, "--input-size", 64, "--output-dir", populated_output, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR_PREFIX)
    assert message in lines[0]
    assert snapshot(populated_output) == before  # nothing written, nothing removed


def test_malicious_pickle_is_refused(tmp_path, populated_output, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = tmp_path / "evil.pth"
    torch.save({"conv1.0.weight": torch.zeros(1), "extra": Payload()}, evil)
    before = snapshot(populated_output)
    code, _, err = run_cli(
        capsys, "--network", SMALL, "--weight-path", evil, "--output-dir", populated_output
    )
    assert code == 2
    assert not marker.exists()
    assert err.startswith(ERROR_PREFIX + f"refusing to load {evil}: it holds a pickled")
    assert "mkdir" in err and "weights_only=True" in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(populated_output) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "gradcam,scorecam"], "unknown CAM method(s) 'scorecam'"),
        (["--network", SMALL, "vgg16", "--layer-name", "conv5"], "1 given for 2 networks"),
        (["--class-id", "-1"], "class ids start at 0"),
        (["--device", "tpu9"], "argument --device"),
    ],
)
def test_usage_errors_exit_2(argv, message, tmp_path, capsys):
    code, _, err = run_cli(capsys, *argv, "--output-dir", tmp_path / "out")
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--device", "cuda", "--output-dir", tmp_path / "out")
    assert code == 2
    assert err.strip().splitlines() == [
        ERROR_PREFIX + "argument --device: CUDA is not available here "
        "(torch.cuda.is_available() is False); use --device cpu"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
@pytest.mark.parametrize("device", [[], ["--device", "auto"]])
def test_auto_device_is_the_default_and_runs_on_the_cpu_without_cuda(device, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "--network", SMALL, "--weight-path", "random", "--input-size", 64,
        "--methods", "gradcam", "--output-dir", tmp_path, *device,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"sample-{SMALL}-cam.png",
        f"sample-{SMALL}-heatmap.png",
    ]


def test_list_networks(capsys):
    code, out, _ = run_cli(capsys, "--list-networks")
    assert code == 0
    names = out.split()
    assert set(SEED_NETWORKS) <= set(names) and "vit_b_16" in names
    assert "fasterrcnn_resnet50_fpn" not in names  # classification models only
