"""``detectron2-gradcam`` end to end: tiny stock configs as YAML, random-weight checkpoints,
generated images; every bad input gives one line on stderr, exit status 2, no damage."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from d2_helpers import KINDS, build

from detectron2_hooks import cli
from detectron2_hooks import weights as weights_module
from detectron2_hooks.tiny import tiny_config
from detectron2_hooks.weights import WeightsError, load_detector_weights, url_cache_path
from lightning_gradcam.io import sample_image, write_images

PROG = "detectron2-gradcam"
MIN_SIZE, MAX_SIZE = 128, 256  # tiny_config's test-time resize
# Generated inputs: (height, width) before and after ResizeShortestEdge(128, 256).
IMAGES = {"scene_a.png": ((160, 160), (128, 128)), "scene_b.jpg": ((200, 150), (171, 128))}
DET_FILE = re.compile(r"^(?P<stem>.+)-det(?P<index>\d\d)-(?P<cls>[^-]+)-(?P<rest>.+)\.png$")


class _Exploit:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory, models) -> dict[str, Path]:
    """Stock (non-CAM) tiny configs as YAML, random-weight checkpoints, generated images."""
    root = tmp_path_factory.mktemp("d2cli")
    out: dict[str, Path] = {}
    for kind in KINDS:
        out[f"{kind}.yaml"] = root / f"{kind}.yaml"
        out[f"{kind}.yaml"].write_text(tiny_config(kind, cam=False).dump())
        out[f"{kind}.pth"] = root / f"{kind}.pth"
        torch.save({"model": models[kind].state_dict(), "iteration": 7}, out[f"{kind}.pth"])
    images = root / "images"
    write_images(
        {
            images / "scene_a.png": sample_image(160, seed=1),
            images / "scene_b.jpg": sample_image(200, seed=2)[:, :150],
        }
    )
    (images / "notes.txt").write_text("folders are expanded to their images only")
    out["images"] = images
    return out


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _decode(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path.name} does not decode"
    return image


def _check_outputs(out_dir: Path, methods: tuple[str, ...], singles: tuple[str, ...], strip: bool):
    """Every image has its detections picture at the original image's size (drawn on it, as
    DefaultPredictor reports boxes in its pixels); detections come in complete, contiguous
    sets of files of the right sizes. Returns {stem: detection count}."""
    names = sorted(p.name for p in out_dir.iterdir())
    counts = {}
    for image_name, ((height, width), _) in IMAGES.items():
        stem = Path(image_name).stem
        assert _decode(out_dir / f"{stem}-detections.png").shape == (height, width, 3)
        per_det: dict[int, set[str]] = {}
        for name in names:
            match = DET_FILE.match(name)
            if match and match["stem"] == stem:
                per_det.setdefault(int(match["index"]), set()).add(match["rest"])
                assert re.fullmatch(r"class_[0-2]", match["cls"]), name
                picture = _decode(out_dir / name)
                if match["rest"] == "cls_subnet-strip":
                    # 2 method rows x 8 layer columns of captioned overlays, 2 px apart.
                    assert picture.shape[1] == 8 * width + 7 * 2
                    assert picture.shape[0] > 2 * height + 2
                else:  # an overlay at the original size, with a caption band below
                    assert picture.shape[1] == width
                    assert height < picture.shape[0] <= height + 3 * 28  # caption lines
        expected = set()
        for layer in singles:
            middle = f"{layer}-" if len(singles) > 1 else ""
            expected |= {f"{middle}{m}" for m in methods}
        if strip:
            expected.add("cls_subnet-strip")
        assert sorted(per_det) == list(range(len(per_det))), names  # det00, det01, ...
        for index, rests in per_det.items():
            assert rests == expected, (stem, index)
        counts[stem] = len(per_det)
    return counts


CASES = {
    "c4": ((), ("gradcam", "gradcam++"), ("roi_heads.res5",), False),
    "fpn": (
        ("--layer-name", "roi_heads.box_pooler", "--layer-name", "backbone.bottom_up.res4"),
        ("gradcam", "gradcam++"),
        ("roi_heads.box_pooler", "backbone.bottom_up.res4"),
        False,
    ),
    "retinanet": (
        ("--layer-name", "head.cls_subnet.*", "--layer-name", "head.cls_subnet.7"),
        ("gradcam", "gradcam++"),
        ("head.cls_subnet.7",),
        True,
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_end_to_end(kind, files, tmp_path, capsys):
    extra, methods, singles, strip = CASES[kind]
    out_dir = tmp_path / "out"
    status, out, err = _run(
        capsys,
        "--config-file",
        files[f"{kind}.yaml"],
        "--input",
        files["images"],
        "--max-detections",
        2,
        "--output-dir",
        out_dir,
        *extra,
        "--opts",
        "MODEL.WEIGHTS",
        files[f"{kind}.pth"],
        "MODEL.DEVICE",
        "cpu",
    )
    assert status == 0, err
    counts = _check_outputs(out_dir, methods, singles, strip)
    assert all(1 <= n <= 2 for n in counts.values()), counts
    # The stock config was switched to the CAM adapter.
    adapter = {"c4": "CAMRes5ROIHeads", "fpn": "CAMStandardROIHeads", "retinanet": "CAMRetinaNet"}
    assert adapter[kind] in out
    assert "Traceback" not in err


def test_detections_picture_shows_the_boxes(files, tmp_path, capsys):
    """The detections picture differs from the original input exactly where boxes are drawn."""
    out_dir = tmp_path / "out"
    image = files["images"] / "scene_a.png"
    status, _, err = _run(
        capsys,
        "--config-file",
        files["c4.yaml"],
        "--input",
        image,
        "--max-detections",
        1,
        "--output-dir",
        out_dir,
        "--opts",
        "MODEL.WEIGHTS",
        files["c4.pth"],
    )
    assert status == 0, err
    drawn = _decode(out_dir / "scene_a-detections.png").astype(int)
    original = _decode(image).astype(int)
    changed = np.abs(drawn - original).max(axis=2) > 40
    assert changed.any()
    assert changed.mean() < 0.3  # box outlines and a label, not a repainted picture


def test_python_dash_m(files, tmp_path):
    out_dir = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "detectron2_hooks",
        "--config-file",
        str(files["c4.yaml"]),
        "--input",
        str(files["images"] / "scene_a.png"),
        "--max-detections",
        "1",
        "--output-dir",
        str(out_dir),
        "--opts",
        "MODEL.WEIGHTS",
        str(files["c4.pth"]),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _decode(out_dir / "scene_a-detections.png").shape == (160, 160, 3)  # the original
    assert len(list(out_dir.glob("scene_a-det00-*-gradcam.png"))) == 1
    assert len(list(out_dir.glob("scene_a-det00-*-gradcam++.png"))) == 1
    assert "scene_a.png: 1 detections explained" in proc.stdout

    bad = subprocess.run(
        argv[:-1] + [str(tmp_path / "missing.pth")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    ours = [line for line in bad.stderr.splitlines() if line.startswith(PROG)]
    assert ours == [
        f"{PROG}: error: MODEL.WEIGHTS {tmp_path / 'missing.pth'} does not exist; "
        "pass a local checkpoint: --opts MODEL.WEIGHTS /path/to/model.pkl (or .pth)"
    ]


def test_model_zoo_name_with_coco_class_names(files, tmp_path, capsys):
    """A stock model-zoo config by name: switched to the CAM adapter, COCO class names from
    MetadataCatalog (random weights, small inputs, so it runs in seconds)."""
    from detectron2.data import MetadataCatalog

    out_dir = tmp_path / "out"
    status, out, err = _run(
        capsys,
        "--config-file",
        "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
        "--input",
        files["images"] / "scene_a.png",
        "--max-detections",
        1,
        "--confidence-threshold",
        0.0,
        "--output-dir",
        out_dir,
        "--opts",
        "MODEL.WEIGHTS",
        "random",
        "MODEL.DEVICE",
        "cpu",
        "INPUT.MIN_SIZE_TEST",
        64,
        "INPUT.MAX_SIZE_TEST",
        96,
        "MODEL.RPN.POST_NMS_TOPK_TEST",
        8,
    )
    assert status == 0, err
    assert "GeneralizedRCNN with CAMRes5ROIHeads" in out
    assert "random weights" in err
    coco = {
        re.sub(r"[^A-Za-z0-9+-]+", "_", n)
        for n in MetadataCatalog.get("coco_2017_val").thing_classes
    }
    written = [DET_FILE.match(p.name) for p in out_dir.iterdir()]
    classes = {m["cls"] for m in written if m}
    assert classes and classes <= coco
    assert "(model input 64x64 px)" in out  # the test-time resize, as DefaultPredictor's
    assert _decode(out_dir / "scene_a-detections.png").shape == (160, 160, 3)  # the original


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An output folder holding an earlier result, which a failed run must leave alone."""
    folder = tmp_path / "out"
    write_images({folder / "earlier-detections.png": sample_image(32, seed=3)})
    return folder


def _assert_refused(capsys, out_dir: Path, argv, *fragments: str) -> str:
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    status, out, err = _run(capsys, "--output-dir", out_dir, *argv)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    after = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    assert after == before
    return lines[0]


def _args(files, kind="c4", weights=None, inputs=None, *extra):
    inputs = inputs if inputs is not None else files["images"]
    weights = weights if weights is not None else files[f"{kind}.pth"]
    return [
        "--config-file",
        files[f"{kind}.yaml"],
        "--input",
        inputs,
        *extra,
        "--opts",
        "MODEL.WEIGHTS",
        weights,
    ]


def test_unreadable_image(files, tmp_path, out_dir, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    argv = _args(files, "c4", None, files["images"] / "scene_a.png")
    argv[4:4] = [broken]  # a good image, then a broken one: nothing at all is written
    _assert_refused(capsys, out_dir, argv, f"cannot read image {broken}", "not a decodable")


def test_missing_image(files, tmp_path, out_dir, capsys):
    missing = tmp_path / "nowhere.png"
    _assert_refused(
        capsys, out_dir, _args(files, "c4", None, missing), f"image path {missing} does not exist"
    )


def test_glob_matching_nothing(files, tmp_path, out_dir, capsys):
    _assert_refused(
        capsys, out_dir, _args(files, "c4", None, str(tmp_path / "*.jpg")), "matches no file"
    )


def test_wrong_layer_name(files, out_dir, capsys):
    line = _assert_refused(
        capsys,
        out_dir,
        _args(files, "c4", None, None, "--layer-name", "roi_heads.res6"),
        "no layer named 'roi_heads.res6'",
    )
    assert "'roi_heads.res5'" in line  # the closest name is suggested


def test_layer_off_the_classification_path(files, out_dir, capsys):
    _assert_refused(
        capsys,
        out_dir,
        _args(files, "c4", None, None, "--layer-name", "proposal_generator.rpn_head.conv"),
        "do not depend on layer 'proposal_generator.rpn_head.conv'",
    )


def test_cls_subnet_glob_needs_retinanet(files, out_dir, capsys):
    _assert_refused(
        capsys,
        out_dir,
        _args(files, "fpn", None, None, "--layer-name", "head.cls_subnet.*"),
        "GeneralizedRCNN has no layer named 'head.cls_subnet'",
    )


def test_missing_weights_file(files, tmp_path, out_dir, capsys):
    missing = tmp_path / "model_final.pth"
    _assert_refused(
        capsys,
        out_dir,
        _args(files, "retinanet", missing),
        f"MODEL.WEIGHTS {missing} does not exist",
        "--opts MODEL.WEIGHTS /path/to/model.pkl",
    )


def test_empty_weights(files, out_dir, capsys):
    argv = ["--config-file", files["c4.yaml"], "--input", files["images"]]  # YAML has ''
    _assert_refused(capsys, out_dir, argv, "MODEL.WEIGHTS is empty", "--opts MODEL.WEIGHTS")


def test_weights_of_another_detector(files, out_dir, capsys):
    _assert_refused(
        capsys,
        out_dir,
        _args(files, "c4", files["fpn.pth"]),
        "do not fit the model of this config",
        "missing",
    )


def test_uncached_url(files, tmp_path, out_dir, capsys, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))

    def offline(url, path, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(weights_module, "_download", offline)
    url = "detectron2://COCO-Detection/faster_rcnn_R_50_C4_1x/137257644/model_final_721ade.pkl"
    _assert_refused(
        capsys,
        out_dir,
        _args(files, "c4", url),
        f"cannot download MODEL.WEIGHTS {url} (network unreachable)",
        "--opts MODEL.WEIGHTS /path/to/model.pkl",
    )


def test_cached_url_is_used_without_download(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_module, "_download", pytest.fail)
    url = "detectron2://tiny/c4/model_final.pth"
    cached = Path(url_cache_path(url))
    assert cached == tmp_path / "cache" / "detectron2" / "tiny" / "c4" / "model_final.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(files["c4.pth"].read_bytes())
    argv = _args(files, "c4", url, files["images"] / "scene_a.png")
    status, out, err = _run(capsys, "--output-dir", tmp_path / "out", *argv)
    assert status == 0, err
    assert f"weights {cached}" in out


def test_config_errors(files, tmp_path, out_dir, capsys):
    argv = ["--input", files["images"]]
    _assert_refused(
        capsys,
        out_dir,
        ["--config-file", "COCO-Detection/faster_rcnn_R_50_C4.yaml", *argv],
        "is not a model-zoo config",
        "did you mean COCO-Detection/faster_rcnn_R_50_C4_",
    )
    _assert_refused(
        capsys,
        out_dir,
        ["--config-file", files["c4.yaml"], *argv, "--opts", "MODEL.WEIGHT", "x"],
        "--opts: Non-existent key: MODEL.WEIGHT",
    )
    _assert_refused(
        capsys,
        out_dir,
        ["--config-file", files["c4.yaml"], *argv, "--opts", "MODEL.WEIGHTS"],
        "--opts takes KEY VALUE pairs",
    )
    _assert_refused(
        capsys,
        out_dir,
        [
            "--config-file",
            files["c4.yaml"],
            *argv,
            "--opts",
            "MODEL.WEIGHTS",
            files["c4.pth"],
            "--max-detections",
            "1",
        ],
        "--max-detections is not a config key: put --max-detections before --opts",
    )
    # LazyConfig (.py) files are read since issue 12 (tests/detectron2/test_zoo_cli.py); one
    # without a detector is refused with one line.
    lazy = tmp_path / "lazy.py"
    lazy.write_text("model = None\n")
    _assert_refused(capsys, out_dir, ["--config-file", lazy, *argv], "no 'model' node")


# ------------------------------------------------------------------------------ unsafe weights


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_malicious_pickle_is_refused(files, tmp_path, out_dir, capsys, suffix):
    marker = tmp_path / "pwned"
    bad = tmp_path / f"model_final{suffix}"
    payload = {"model": {"backbone.stem.conv1.weight": _Exploit(marker)}, "__author__": "x"}
    if suffix == ".pth":
        torch.save(payload, bad)
    else:
        bad.write_bytes(pickle.dumps(payload, protocol=2))
    _assert_refused(capsys, out_dir, _args(files, "c4", bad), f"refusing to load {bad}", "system")
    assert not marker.exists()


def test_model_zoo_style_pkl_loads_exactly(models, tmp_path):
    """A detectron2 model-zoo ``.pkl`` (numpy arrays, protocol 2, as Python 2 wrote them) goes
    through the restricted unpickler and gives the exact tensors."""
    source = models["fpn"].state_dict()
    path = tmp_path / "model_final_zoo.pkl"
    arrays = {k: v.numpy() for k, v in source.items()}
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}, 2))
    target = build("fpn", cam=False, seed=5)
    load_detector_weights(target, str(path))
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in source)


def test_pkl_of_other_objects_is_refused(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": Path("x")}}))
    with pytest.raises(WeightsError, match=r"refusing to load .*pathlib"):
        load_detector_weights(build("c4"), str(path))


# ------------------------------------------------------------------------------ issue 11


def test_score_option(files, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = _args(files, "c4", None, files["images"] / "scene_a.png", "--max-detections", 1)
    status, out, err = _run(capsys, "--output-dir", out_dir, "--score", "probability", *argv)
    assert status == 0, err
    assert "score probability" in out.splitlines()[0]
    status, out, err = _run(capsys, "--output-dir", out_dir, *argv)
    assert status == 0 and "score logit" in out.splitlines()[0], err
    status, _, err = _run(capsys, "--score", "softmax", *argv)
    assert status == 2 and "invalid choice: 'softmax'" in err


def test_truncated_png_gives_one_line_on_stderr(files, tmp_path, out_dir, capfd):
    """OpenCV's own [ WARN ] line (written by C++ to the stderr file descriptor) is silenced:
    our line is the only one."""
    ok, encoded = cv2.imencode(".png", sample_image(64, seed=4))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(encoded.tobytes()[:300])
    status = cli.main(
        [str(a) for a in ["--output-dir", out_dir, *_args(files, "c4", None, truncated)]]
    )
    err = capfd.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == [
        f"{PROG}: error: cannot read image {truncated}: not a decodable image file (empty, "
        "truncated, or a format OpenCV does not read)"
    ]


def test_layer_not_found_names_the_detector_default(files, out_dir, capsys):
    line = _assert_refused(
        capsys, out_dir, _args(files, "c4", None, None, "--layer-name", "roi_heads.res6")
    )
    assert "leave out --layer-name for the detector's default (roi_heads.res5 for C4" in line
    assert "4-D" not in line


def test_torch_zip_named_pkl_gets_a_precise_message(files, tmp_path, out_dir, capsys):
    misnamed = tmp_path / "model_final.pkl"
    misnamed.write_bytes(files["c4.pth"].read_bytes())  # torch.save's zip archive
    _assert_refused(
        capsys,
        out_dir,
        _args(files, "c4", misnamed),
        f"cannot read weights {misnamed}: it is a torch checkpoint",
        "rename it to .pth",
    )
