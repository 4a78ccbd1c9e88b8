"""Issue 13: any LightningModule (model=), every mistake at step 0 (trial pass without a sanity
check), the final weights explained, one tag per layer, and a failed pass never ends the run."""

from __future__ import annotations

import re
import warnings

import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer, read_events, steps
from cam_tiny import BATCH, LAYER, SIZE, STEPS_PER_EPOCH, DictShapes, TinyPL, make_net, val_loader
from torch import nn
from torch.utils.data import DataLoader

from lightning_gradcam import CAMEngine, GradCAMCallback
from lightning_gradcam.core.drift import energy_in_boxes
from lightning_gradcam.core.render import caption, draw_boxes, to_uint8_image
from lightning_gradcam.synthetic import make_shapes

pytestmark = pytest.mark.timeout(180)

PREFIX = f"gradcam/{LAYER}"


def _fit(tmp_path, callbacks, module=None, val=True, **kwargs):
    """Fit (2 epochs by default); returns the module, the trainer and our warnings."""
    torch.manual_seed(0)
    module = module or TinyPL()
    trainer = make_trainer(pl, tmp_path, callbacks, **{"max_epochs": 2, **kwargs})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, val_dataloaders=val_loader() if val else None)
    ours = [str(w.message) for w in caught if "GradCAMCallback" in str(w.message)]
    return module, trainer, ours


# ---------------------------------------------------------------------- model=


class NoForward(pl.LightningModule):
    """Keeps its network in self.model and has no forward of its own."""

    def __init__(self):
        super().__init__()
        self.model = make_net()

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.model(batch["image"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        self.log(
            "val_loss", nn.functional.cross_entropy(self.model(batch["image"]), batch["label"])
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(DictShapes(48, seed=0), batch_size=BATCH)


class BatchForward(NoForward):
    """Its forward takes the batch dict, not images."""

    def forward(self, batch):
        return self.model(batch["image"])


@pytest.mark.parametrize("model", ["model", lambda module: module.model], ids=["path", "callable"])
def test_model_names_the_network_and_layers_are_relative_to_it(tmp_path, model):
    cb = GradCAMCallback(model=model, layer="features.block2", methods="gradcam", num_samples=2)
    _fit(tmp_path, [cb], NoForward())
    images, _ = read_events(tmp_path / "tb")
    assert steps(images["gradcam/features.block2/gradcam/sample_01"]) == [3, 6]


@pytest.mark.parametrize("module_class", [NoForward, BatchForward])
def test_a_module_not_callable_on_images_fails_at_step_0_saying_model(tmp_path, module_class):
    module = module_class()
    cb = GradCAMCallback(layer="model.features.block2", methods="gradcam")
    with pytest.raises(TypeError, match=r"could not call .* pass model=") as caught:
        _fit(tmp_path, [cb], module, num_sanity_val_steps=0)
    assert "model='model'" in str(caught.value)
    assert module.trainer.global_step == 0


def test_a_wrong_model_path_fails_at_fit_start_listing_the_submodules(tmp_path):
    cb = GradCAMCallback(model="net")
    with pytest.raises(
        AttributeError, match=r"has no attribute 'net'; its submodules are \['model'\]"
    ):
        _fit(tmp_path, [cb], NoForward())


# ---------------------------------------------------------------------- trial pass at step 0


class PicBatches(torch.utils.data.Dataset):
    """Samples the default batch parser cannot read (no image key)."""

    def __init__(self):
        self.data = make_shapes(8, size=SIZE, seed=1)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"pic": self.data.images[i], "label": self.data.labels[i]}


@pytest.mark.parametrize(
    ("validation", "val_every"),
    [(True, 1), (False, 1), (True, 2)],
    ids=["first_val_batch", "no_validation", "validation_not_yet_set_up"],
)
def test_without_sanity_check_a_class_outside_the_head_fails_at_step_0(
    tmp_path, validation, val_every
):
    # validation_not_yet_set_up: Lightning loads the validation data only before the first
    # epoch that validates, so the trial pass runs on the first training batch's images.
    module = TinyPL()
    cb = GradCAMCallback(layer=LAYER, target=7)
    with pytest.raises(ValueError, match="class id 7 is outside the model's 3 classes") as caught:
        _fit(
            tmp_path,
            [cb],
            module,
            val=validation,
            num_sanity_val_steps=0,
            check_val_every_n_epoch=val_every,
        )
    assert any("trial CAM pass" in note for note in getattr(caught.value, "__notes__", []))
    assert module.train_steps == 0


class DictOutput(TinyPL):
    """Returns its scores under a key the callback does not know."""

    def forward(self, x):
        return {"scores": self.net(x)}

    def training_step(self, batch, batch_idx):
        self.train_steps += 1
        x, y = self._xy(batch)
        return nn.functional.cross_entropy(self(x)["scores"], y)

    def validation_step(self, batch, batch_idx):
        pass


def test_without_sanity_check_an_unreadable_output_fails_at_step_0(tmp_path):
    module = DictOutput()
    with pytest.raises(TypeError, match=r"model returned a mapping with keys \['scores'\]"):
        _fit(tmp_path, [GradCAMCallback(layer=LAYER)], module, num_sanity_val_steps=0)
    assert module.train_steps == 0


def test_fast_dev_run_still_tries_the_pass_at_step_0(tmp_path):
    module = TinyPL()
    with pytest.raises(ValueError, match="class id 7 is outside"):
        _fit(tmp_path, [GradCAMCallback(layer=LAYER, target=7)], module, fast_dev_run=True)
    assert module.train_steps == 0


def test_without_sanity_check_an_unparseable_batch_fails_at_step_0(tmp_path):
    module = TinyPL()
    trainer = make_trainer(pl, tmp_path, [GradCAMCallback(layer=LAYER)], num_sanity_val_steps=0)
    with pytest.raises(
        ValueError, match=r"cannot find images in a batch dict with keys \['label', 'pic'\]"
    ):
        trainer.fit(module, val_dataloaders=DataLoader(PicBatches(), batch_size=4))
    assert module.train_steps == 0


# ---------------------------------------------------------------------- last pass


class StopsAtStep(TinyPL):
    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if self.train_steps + 1 == self.fail_at:
            raise RuntimeError("the run breaks here")
        return super().training_step(batch, batch_idx)


def test_a_fit_stopped_mid_epoch_ends_with_a_pass_on_its_final_weights(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2)
    _module, trainer, _ = _fit(tmp_path, [cb], max_epochs=5, max_steps=STEPS_PER_EPOCH + 1)
    assert trainer.global_step == STEPS_PER_EPOCH + 1
    images, _ = read_events(tmp_path / "tb")
    assert steps(images[f"{PREFIX}/gradcam/grid"]) == [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1]


def test_no_last_pass_after_an_exception_nor_when_the_last_pass_was_final(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2)
    with pytest.raises(RuntimeError, match="the run breaks here"):
        _fit(tmp_path / "a", [cb], StopsAtStep(fail_at=STEPS_PER_EPOCH + 2))
    assert [entry["step"] for entry in cb.history] == [STEPS_PER_EPOCH]
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2)
    _fit(tmp_path / "b", [cb])
    assert [entry["step"] for entry in cb.history] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


# ---------------------------------------------------------------------- tags


def test_tags_use_the_full_layer_name_however_it_was_given(tmp_path):
    short = GradCAMCallback(
        layer="features.block2", methods="gradcam", num_samples=2, tag_prefix="a"
    )
    full = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2, tag_prefix="b")
    _fit(tmp_path, [short, full], max_epochs=1)
    images, scalars = read_events(tmp_path / "tb")
    tags_a = {t.removeprefix("a/") for t in images if t.startswith("a/")}
    tags_b = {t.removeprefix("b/") for t in images if t.startswith("b/")}
    assert tags_a == tags_b and f"{LAYER}/gradcam/grid" in tags_a


# ---------------------------------------------------------------------- never take down the run


class Tripwire(nn.Module):
    """Identity in training and validation; in a CAM pass (eval mode with gradients on) it
    raises at the calls listed in ``fail_on`` (1 = the trial pass), or runs out of memory
    on batches of more than ``max_batch`` images."""

    def __init__(self, fail_on=(), max_batch=None):
        super().__init__()
        self.fail_on, self.max_batch, self.calls = set(fail_on), max_batch, 0

    def forward(self, x):
        if not self.training and torch.is_grad_enabled():
            if self.max_batch is not None and x.shape[0] > self.max_batch:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            self.calls += 1
            if self.calls in self.fail_on:
                raise ValueError(f"boom at CAM call {self.calls}")
        return x


class Tripped(TinyPL):
    def __init__(self, **tripwire):
        super().__init__()
        self.net.features.add_module("tripwire", Tripwire(**tripwire))


def test_a_failed_pass_is_one_warning_a_mark_and_training_goes_on(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2)
    module, trainer, ours = _fit(tmp_path, [cb], Tripped(fail_on={2}), max_epochs=3)
    assert trainer.global_step == 3 * STEPS_PER_EPOCH and module.train_steps == 3 * STEPS_PER_EPOCH
    assert ours == [
        f"GradCAMCallback: the CAM pass at step {STEPS_PER_EPOCH} failed and was skipped "
        "(ValueError: boom at CAM call 2); training goes on (1 failed in a row, off after 3)"
    ]
    images, scalars = read_events(tmp_path / "tb")
    assert steps(images[f"{PREFIX}/gradcam/grid"]) == [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
    assert scalars[f"{PREFIX}/skipped_passes"] == [(STEPS_PER_EPOCH, 1.0)]


def test_three_failures_in_a_row_switch_the_callback_off(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2)
    tripped = Tripped(fail_on=set(range(2, 100)))
    module, trainer, ours = _fit(tmp_path, [cb], tripped, max_epochs=5)
    assert trainer.global_step == 5 * STEPS_PER_EPOCH
    assert len(ours) == 3 and "switches itself off for the rest of the run" in ours[2]
    assert tripped.net.features.tripwire.calls == 4  # the trial, 3 failures, nothing after
    _images, scalars = read_events(tmp_path / "tb")
    assert steps(scalars[f"{PREFIX}/skipped_passes"]) == [3, 6, 9]
    assert cb.history == []


def test_on_error_raise_stops_the_run(tmp_path):
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=2, on_error="raise")
    with pytest.raises(ValueError, match="boom at CAM call 2") as caught:
        _fit(tmp_path, [cb], Tripped(fail_on={2}))
    assert any("on_error='warn' would skip" in n for n in getattr(caught.value, "__notes__", []))


def test_out_of_memory_retries_in_smaller_chunks_with_the_same_maps(tmp_path):
    chunked = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=6)
    torch.manual_seed(0)  # the same initial weights in both runs
    _m, _t, ours = _fit(tmp_path / "a", [chunked], Tripped(max_batch=2))
    assert ours == []
    whole = GradCAMCallback(layer=LAYER, methods="gradcam", num_samples=6)
    torch.manual_seed(0)
    _fit(tmp_path / "b", [whole], Tripped())
    assert [e["step"] for e in chunked.history] == [e["step"] for e in whole.history] == [3, 6]
    for a, b in zip(chunked.history, whole.history):
        for name, value in b["scalars"]["gradcam"].items():
            assert a["scalars"]["gradcam"][name] == pytest.approx(value, abs=1e-5)


# ---------------------------------------------------------------------- no positive evidence


def test_a_map_without_positive_evidence_is_said_so_and_counted_as_zero(tmp_path):
    data = make_shapes(4, size=SIZE, seed=3)
    keep = torch.tensor([1.0, 1.0, 0.0, 0.0])  # images 2 and 3: a zero score, a zero map
    cb = GradCAMCallback(
        layer=LAYER,
        methods="gradcam",
        images=data.images,
        boxes=data.boxes,
        target=lambda out: out[:, 0] * keep.to(out),
        max_image_size=None,
    )
    module, _trainer, ours = _fit(tmp_path, [cb])
    assert ours == []
    images, scalars = read_events(tmp_path / "tb")
    # the tile of an image without evidence is its input, captioned so, never a blank overlay
    plain = draw_boxes(to_uint8_image(data.images[2]), data.boxes[2:3])
    final_tile = images[f"{PREFIX}/gradcam/sample_02"][-1][1]
    assert (final_tile == caption(plain, "score 0.00: no positive evidence")).all()
    # energy_in_box: the mean over all four images, the two without evidence counting 0
    # (no_evidence_rate says so; the last pass is final)
    result = CAMEngine(module, layer=LAYER, methods="gradcam").explain(
        data.images[:2], targets=lambda out: out[:, 0]
    )
    expected = energy_in_boxes(result.maps["gradcam"][:, 0], data.boxes[:2]).sum() / 4
    assert scalars[f"{PREFIX}/gradcam/no_evidence_rate"][-1][1] == 0.5
    final_energy = scalars[f"{PREFIX}/gradcam/energy_in_box"][-1][1]
    assert final_energy == pytest.approx(float(expected), abs=1e-5)


def test_no_drift_and_zero_energy_when_no_map_has_evidence(tmp_path):
    data = make_shapes(2, size=SIZE, seed=3)
    cb = GradCAMCallback(
        layer=LAYER,
        methods="gradcam",
        images=data.images,
        boxes=data.boxes,
        target=lambda out: out[:, 0] * 0,
    )
    _fit(tmp_path, [cb])
    images, scalars = read_events(tmp_path / "tb")
    assert steps(images[f"{PREFIX}/gradcam/grid"]) == [3, 6]
    # Every region scalar at each pass (a monitor finds it): all maps without evidence, so
    # nothing in the boxes and no hit; no drift of 1 is made up.
    logged = sorted(tag for tag in scalars if tag.startswith(PREFIX))
    assert logged == [
        f"{PREFIX}/gradcam/{name}"
        for name in ("energy_in_box", "no_evidence_rate", "pointing_game")
    ]
    assert [value for _, value in scalars[f"{PREFIX}/gradcam/no_evidence_rate"]] == [1.0, 1.0]
    assert [value for _, value in scalars[f"{PREFIX}/gradcam/energy_in_box"]] == [0.0, 0.0]
    assert not any(re.search("drift", k) for e in cb.history for k in e["scalars"]["gradcam"])
