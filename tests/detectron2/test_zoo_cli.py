"""``detectron2-gradcam`` with LazyConfig (``.py``) files and model-zoo names: loading,
``key=value`` overrides, pictures for every model-zoo detector (Cascade R-CNN, FCOS,
PanopticFPN, ViTDet, RetinaNet), and clear one-line refusals."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from detectron2_hooks import cli
from detectron2_hooks.building import use_device
from detectron2_hooks.loading import ConfigError, config_path, load_config
from detectron2_hooks.tiny import tiny_config
from lightning_gradcam.core.command_line import DeviceError
from lightning_gradcam.io import sample_image, write_images

PROG = cli.PROG


def _lazy_file(tmp_path: Path, kind: str, checkpoint: str = "") -> Path:
    """A user's LazyConfig file: a tiny shipped model, a train node, a test resize."""
    path = tmp_path / f"tiny_{kind}.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import detectron2.data.transforms as T
            from detectron2.config import LazyCall as L
            from detectron2_hooks.tiny import tiny_lazy_config

            _cfg = tiny_lazy_config({kind!r}, cam=False)
            model = _cfg.model
            train = dict(init_checkpoint={checkpoint!r}, device="cpu")
            dataloader = dict(
                test=dict(
                    dataset=dict(names="coco_2017_val"),
                    mapper=dict(
                        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=160)]
                    ),
                )
            )
            """
        )
    )
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    write_images({path: sample_image(128)})
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


#: kind -> (the adapter the command names, an override that lowers the score threshold).
LAZY_KINDS = {
    "retinanet": ("CAMRetinaNet", "model.test_score_thresh=0.0001"),
    "fcos": ("CAMFCOS", "model.test_score_thresh=0.0001"),
    "vitdet": (
        "GeneralizedRCNN with CAMStandardROIHeads",
        "model.roi_heads.box_predictor.test_score_thresh=0.0001",
    ),
    "panoptic": ("PanopticFPN", "model.roi_heads.box_predictor.test_score_thresh=0.0001"),
    # A cascade's three predictors are a list; the tiny model detects at the shipped 0.05.
    "cascade": ("GeneralizedRCNN with CAMCascadeROIHeads", "train.device=cpu"),
}


@pytest.mark.parametrize("kind", list(LAZY_KINDS))
def test_lazy_config_file_with_overrides_writes_pictures(kind, tmp_path, image, capsys):
    config = _lazy_file(tmp_path, kind)  # init_checkpoint "": the override gives "random"
    out_dir = tmp_path / "out"
    adapter, threshold = LAZY_KINDS[kind]
    status, out, err = _run(
        capsys,
        "--config-file", config, "--input", image, "--output-dir", out_dir,
        "--max-detections", "1", "--methods", "gradcam",
        "--opts", "train.init_checkpoint=random", threshold,
    )  # fmt: skip
    assert status == 0, err
    assert out.startswith(f"{adapter}: weights random")
    assert "(model input 128x128 px)" in out  # the file's test resize, not detectron2's default 800
    names = sorted(p.name for p in out_dir.iterdir())
    assert "shapes-detections.png" in names
    # COCO's class names come from the file's dataloader.test.dataset.names.
    assert any(n.startswith("shapes-det00-") and n.endswith("-gradcam.png") for n in names), names


@pytest.mark.parametrize("kind", ["cascade", "panoptic"])
def test_yaml_model_zoo_cascade_and_panoptic_write_pictures(kind, tmp_path, image, capsys):
    out_dir = tmp_path / "out"
    yaml = {
        "cascade": "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
        "panoptic": "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    }[kind]
    status, out, err = _run(
        capsys,
        "--config-file", yaml, "--input", image, "--output-dir", out_dir,
        "--max-detections", "1", "--methods", "gradcam", "--confidence-threshold", "0.0001",
        "--opts", "MODEL.WEIGHTS", "random", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "64",
        "MODEL.PIXEL_STD", "[57.4, 57.1, 58.4]", "INPUT.MIN_SIZE_TEST", "128",
    )  # fmt: skip
    assert status == 0, err
    assert any(n.endswith("-gradcam.png") for n in (p.name for p in out_dir.iterdir()))


def test_lazy_config_names_train_device(tmp_path, image, capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    config = _lazy_file(tmp_path, "retinanet", checkpoint="random")
    status, _, err = _run(
        capsys, "--config-file", config, "--input", image, "--output-dir", tmp_path / "o",
        "--opts", "train.device=cuda",
    )  # fmt: skip
    assert status == 2 and "train.device cuda" in err and "--opts train.device=cpu" in err
    assert "--device cpu" in err and "MODEL.DEVICE" not in err
    assert len(err.strip().splitlines()) == 1


def test_lazy_model_zoo_names_load_with_overrides():
    cfg = load_config(
        "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
        ["train.device=cpu", "model.roi_heads.num_classes=3", "train.init_checkpoint=m.pkl"],
        confidence_threshold=0.3,
    )
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.ROI_HEADS.NAME == "CAMStandardROIHeads"
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.DATASETS.TEST == ("coco_2017_val",)
    with pytest.raises(ConfigError, match="train.init_checkpoint=/path/to/model.pkl"):
        load_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")  # init_checkpoint ""
    # The common/models files have no train node: the override creates it.
    weights = ["train.init_checkpoint=random"]
    cfg = load_config("common/models/retinanet.py", [*weights, "model.num_classes=5"])
    assert (cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.RETINANET.NUM_CLASSES) == ("CAMRetinaNet", 5)
    assert (cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE) == ("random", "cpu")
    assert load_config("common/models/fcos.py", weights).MODEL.META_ARCHITECTURE == "CAMFCOS"


def test_lazy_config_refusals(tmp_path, image, capsys):
    def refused(argv, *fragments):
        out_dir = tmp_path / "out"
        status, _, err = _run(capsys, "--input", image, "--output-dir", out_dir, *argv)
        assert status == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), err
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
        assert not out_dir.exists() or not any(out_dir.iterdir())

    config = _lazy_file(tmp_path, "retinanet", checkpoint="random")
    refused(["--config-file", config, "--opts", "MODEL.WEIGHTS", "x"], "key=value")
    refused(["--config-file", config, "--opts", "model.nope.deeper=1"], "--opts")
    refused(["--config-file", "common/models/retinanet_typo.py"], "did you mean")
    broken = tmp_path / "broken.py"
    broken.write_text("model = undefined_name\n")
    refused(["--config-file", broken], "cannot read config", "NameError")


def test_model_zoo_names_include_lazy_configs():
    assert config_path("common/models/retinanet.py").endswith("common/models/retinanet.py")
    with pytest.raises(ConfigError, match="LazyConfig"):
        config_path("common/models/nothing.py")


# ------------------------------------------------------------------------ --device, no CUDA

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture
def cuda_yaml(tmp_path) -> Path:
    """A stock C4 YAML that asks for CUDA, as detectron2's get_cfg() default does."""
    cfg = tiny_config("c4", cam=False)
    cfg.MODEL.DEVICE = "cuda"
    cfg.MODEL.WEIGHTS = "random"
    path = tmp_path / "c4_cuda.yaml"
    path.write_text(cfg.dump())
    return path


def _one_error_line(status: int, err: str) -> str:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), err
    return lines[0]


@no_cuda
def test_explicit_cuda_device_without_cuda_is_one_line_and_exit_2(
    cuda_yaml, image, tmp_path, capsys
):
    out_dir = tmp_path / "out"
    base = ["--config-file", cuda_yaml, "--input", image, "--output-dir", out_dir]
    line = _one_error_line(*_run(capsys, *base, "--device", "cuda")[::2])
    assert "argument --device: CUDA is not available here" in line and "--device cpu" in line
    # The same device asked for in --opts is as explicit: refused, with both fixes named.
    line = _one_error_line(*_run(capsys, *base, "--opts", "MODEL.DEVICE", "cuda")[::2])
    assert "MODEL.DEVICE cuda: CUDA is not available here" in line
    assert "--device cpu" in line and "--opts MODEL.DEVICE cpu" in line
    line = _one_error_line(*_run(capsys, *base, "--device", "gpu")[::2])
    assert "'gpu' is not a torch device" in line
    assert not out_dir.exists()


@no_cuda
def test_auto_device_runs_a_cuda_config_on_the_cpu_with_a_note(cuda_yaml, image, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = ["--config-file", cuda_yaml, "--input", image, "--output-dir", out_dir]
    argv += ["--max-detections", "1", "--methods", "gradcam"]
    status, out, err = _run(capsys, *argv)  # --device auto, the default
    assert status == 0, err
    assert f"{PROG}: note: the config asks for MODEL.DEVICE cuda, which is not available" in err
    assert "shapes-detections.png" in {p.name for p in out_dir.iterdir()}
    # An explicit --device cpu wins over the config and --opts: no note, no error.
    status, _, err = _run(
        capsys, *argv, "--device", "cpu", "--opts", "MODEL.DEVICE", "cuda"
    )  # fmt: skip
    assert status == 0 and "note" not in err, err


@no_cuda
def test_use_device_as_a_library(cuda_yaml):
    cfg = load_config(str(cuda_yaml))
    note = use_device(cfg)  # auto, the config's device from the file
    assert cfg.MODEL.DEVICE == "cpu"
    assert (
        note == "the config asks for MODEL.DEVICE cuda, which is not available: running on the CPU"
    )
    opts = ["MODEL.DEVICE", "cuda:0"]
    with pytest.raises(DeviceError, match=r"^MODEL.DEVICE cuda:0: CUDA is not available here"):
        use_device(load_config(str(cuda_yaml), opts), opts=opts)
    cfg = load_config(str(cuda_yaml), opts)
    assert use_device(cfg, "cpu", opts) is None and cfg.MODEL.DEVICE == "cpu"
