"""What GradCAMCallback writes, read back from the event files (or PNG files)."""

from __future__ import annotations

import csv
import os
import warnings

import cv2
import lightning.pytorch as lp
import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events, steps
from cam_tiny import LAYER, SIZE, STEPS_PER_EPOCH, TinyL, TinyPL, val_loader

from lightning_gradcam import GradCAMCallback

pytestmark = pytest.mark.timeout(120)

PREFIX = f"gradcam/{LAYER}"
CAPTION = max(14, min(28, SIZE // 8))  # render.caption's band height for 32-pixel tiles


def _captioned(picture, size: int) -> bool:
    """A ``size``-pixel tile above a caption band of whole lines (captions wrap rather than
    shrink below a legible size, so a long one takes several)."""
    lines, rest = divmod(picture.shape[0] - size, CAPTION)
    return picture.shape[1] == size and lines >= 1 and rest == 0


def _expected_image_tags(methods, n):
    tags = {f"{PREFIX}/inputs"}
    for m in methods:
        tags |= {f"{PREFIX}/{m}/grid"} | {f"{PREFIX}/{m}/sample_{i:02d}" for i in range(n)}
    return tags


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    torch.manual_seed(0)
    cb = GradCAMCallback(layer=LAYER, num_samples=6, class_names=["circle", "square", "tri"])
    trainer = make_trainer(pl, root, [cb], max_epochs=3, num_sanity_val_steps=2)
    trainer.fit(TinyPL(), val_dataloaders=val_loader(batch_size=4))
    return cb, read_events(root / "tb")


def test_image_tags_at_exactly_the_epoch_ends(three_epochs):
    cb, (images, _) = three_epochs
    methods = ("gradcam", "gradcam++")
    assert set(images) == _expected_image_tags(methods, 6)
    epoch_ends = [STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    assert steps(images[f"{PREFIX}/inputs"]) == [epoch_ends[0]]  # once, never at sanity (0)
    for m in methods:
        assert steps(images[f"{PREFIX}/{m}/sample_05"]) == epoch_ends
        assert steps(images[f"{PREFIX}/{m}/grid"]) == epoch_ends


def test_pngs_decode_to_the_expected_size(three_epochs):
    _, (images, _) = three_epochs
    _, tile = images[f"{PREFIX}/gradcam/sample_00"][0]
    assert _captioned(tile, SIZE)
    _, grid = images[f"{PREFIX}/gradcam/grid"][0]
    assert grid.shape[1:] == (6 * SIZE + 5 * 2, 3) and _captioned(grid[:, :SIZE], SIZE)
    _, inputs = images[f"{PREFIX}/inputs"][0]
    assert inputs.shape[1] == grid.shape[1] and _captioned(inputs[:, :SIZE], SIZE)  # labelled
    # the overlay is not the bare image: the heat map coloured it
    assert float(tile[:SIZE].std()) > 0


def test_images_taken_across_small_batches_and_kept_on_cpu(three_epochs):
    cb, _ = three_epochs
    expected = val_loader(batch_size=4).dataset.data.images[:6]
    samples = cb.state_dict()["samples"]
    assert samples["images"].device.type == "cpu"
    assert torch.equal(samples["images"], expected)
    assert samples["boxes"] is not None  # from the dict batches' "boxes"


def test_drift_and_energy_scalars(three_epochs):
    cb, (_, scalars) = three_epochs
    ends = [STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    for m in ("gradcam", "gradcam++"):
        prev = scalars[f"{PREFIX}/{m}/drift_vs_prev"]
        first = scalars[f"{PREFIX}/{m}/drift_vs_first"]
        energy = scalars[f"{PREFIX}/{m}/energy_in_box"]
        assert steps(prev) == ends[1:] and steps(first) == ends[1:]
        assert steps(energy) == ends
        # second CAM epoch: previous and first are the same maps
        assert prev[0][1] == pytest.approx(first[0][1])
        assert all(0.0 <= v <= 2.0 for _, v in prev + first)
        assert all(0.0 <= v <= 1.0 for _, v in energy)
    assert len(cb.history) == 3


def test_captions_fix_the_label_as_target(three_epochs):
    cb, _ = three_epochs
    state = cb.state_dict()
    assert torch.equal(state["targets"], state["samples"]["labels"])


def test_filmstrip_rows_are_samples_columns_epochs(three_epochs):
    cb, _ = three_epochs
    strip = cb.filmstrip("gradcam++")
    assert strip.shape[1:] == (4 * SIZE + 3 * 2, 3)
    assert strip.shape[0] >= 6 * (SIZE + CAPTION) + 5 * 2  # captions may wrap onto more lines
    with pytest.raises(ValueError, match="was not computed"):
        cb.filmstrip("layercam")


def test_every_n_epochs_two(tmp_path):
    torch.manual_seed(0)  # weights whose maps have positive evidence (else no drift)
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2, every_n_epochs=2)
    trainer = make_trainer(pl, tmp_path, [cb], max_epochs=4)
    trainer.fit(TinyPL(), val_dataloaders=val_loader())
    images, scalars = read_events(tmp_path / "tb")
    expected = [STEPS_PER_EPOCH * 2, STEPS_PER_EPOCH * 4]
    assert steps(images[f"{PREFIX}/gradcam/sample_01"]) == expected
    assert steps(images[f"{PREFIX}/gradcam/grid"]) == expected
    assert steps(scalars[f"{PREFIX}/gradcam/drift_vs_prev"]) == expected[1:]
    assert f"{PREFIX}/gradcam/sample_02" not in images


def test_lightning_pytorch_trainer(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods=("hirescam",), num_samples=3)
    trainer = make_trainer(lp, tmp_path, [cb], max_epochs=2)
    trainer.fit(TinyL(), val_dataloaders=val_loader())
    images, scalars = read_events(tmp_path / "tb")
    assert set(images) == _expected_image_tags(("hirescam",), 3)
    assert steps(images[f"{PREFIX}/hirescam/sample_02"]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert steps(scalars[f"{PREFIX}/hirescam/drift_vs_first"]) == [2 * STEPS_PER_EPOCH]


@pytest.mark.parametrize("package", [pl, lp], ids=["pytorch_lightning", "lightning.pytorch"])
def test_without_tensorboard_one_warning_and_pngs(tmp_path, package):
    torch.manual_seed(0)  # weights whose maps have positive evidence (else no drift)
    module = TinyPL() if package is pl else TinyL()
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=4)
    trainer = make_trainer(package, tmp_path, [cb], logger=False, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, val_dataloaders=val_loader())
    ours = [w for w in caught if "GradCAMCallback found no TensorBoardLogger" in str(w.message)]
    assert len(ours) == 1
    root = tmp_path / "gradcam"
    folder = root / "gradcam" / LAYER / "gradcam" / "sample_01"
    files = sorted(os.listdir(folder))
    assert files == [f"step_{STEPS_PER_EPOCH:07d}.png", f"step_{2 * STEPS_PER_EPOCH:07d}.png"]
    png = cv2.imread(str(folder / files[0]))
    assert _captioned(png, SIZE)
    with open(root / "scalars.csv") as handle:
        rows = list(csv.DictReader(handle))
    tags = {(r["tag"], int(r["step"])) for r in rows}
    assert (f"gradcam/{LAYER}/gradcam/drift_vs_prev", 2 * STEPS_PER_EPOCH) in tags
    assert (f"gradcam/{LAYER}/gradcam/energy_in_box", STEPS_PER_EPOCH) in tags


def test_validate_and_test_are_skipped_with_one_message(tmp_path):
    module = TinyPL()
    module.test_step = module.validation_step
    cb = GradCAMCallback(layer=LAYER, num_samples=2)
    trainer = make_trainer(pl, tmp_path, [cb])
    message = r"runs inside trainer.fit\(\) only; skipped for trainer.validate\(\)"
    with pytest.warns(UserWarning, match=message) as caught:
        trainer.validate(module, dataloaders=val_loader())
        trainer.test(module, dataloaders=val_loader())
        trainer.validate(module, dataloaders=val_loader())
    assert sum("GradCAMCallback runs inside" in str(w.message) for w in caught) == 1
    state = cb.state_dict()
    assert state["samples"] is None and state["cam_count"] == 0 and not cb.history
    assert not (tmp_path / "tb").exists() or not read_events_or_empty(tmp_path / "tb")


def read_events_or_empty(path):
    try:
        images, _ = read_events(path)
    except AssertionError:
        return {}
    return {t: v for t, v in images.items() if t.startswith("gradcam")}


def test_no_validation_loop_explains_at_training_epoch_end(tmp_path):
    # also: layer=None picks the last 4-D layer, and the tags use its name
    cb = GradCAMCallback(layer=None, methods="gradcam", num_samples=4, target="prediction")
    trainer = make_trainer(pl, tmp_path, [cb], max_epochs=2, limit_val_batches=0)
    trainer.fit(TinyPL())
    assert cb.state_dict()["layer"] == "net.features"
    images, _ = read_events(tmp_path / "tb")
    prefix = "gradcam/net.features"
    assert steps(images[f"{prefix}/gradcam/sample_03"]) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    state = cb.state_dict()
    assert len(state["samples"]["images"]) == 4  # from the first training batch
    assert state["targets"] is not None and state["targets"].shape == (4,)


def test_two_callbacks_on_two_layers_coexist(tmp_path):
    a = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2)
    b = GradCAMCallback(layer="net.features.block1", methods="gradcam", num_samples=2)
    trainer = make_trainer(pl, tmp_path, [a, b], max_epochs=1)
    trainer.fit(TinyPL(), val_dataloaders=val_loader())
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    images, _ = read_events(tmp_path / "tb")
    assert f"gradcam/{LAYER}/gradcam/grid" in images
    assert "gradcam/net.features.block1/gradcam/grid" in images
    saved = torch.load(tmp_path / "two.ckpt", weights_only=False)["callbacks"]
    assert {a.state_key, b.state_key} <= set(saved)
