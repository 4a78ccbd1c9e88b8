"""GradCAMCallback(metrics_on="validation") reuses the forward of the module's own
validation_step (core.tap) in real fits: one forward per validation batch, not two; the
step's outputs and metrics are what they are without the callback; a step that does not call
the module on the batch's images gets the measure's own forward, said once; after an error
in the step no hook stays on the model."""

from __future__ import annotations

import logging
import math

import pytest
import pytorch_lightning as pl
import torch
from cam_events import make_trainer
from cam_tiny import LAYER, SIZE, TinyPL, val_loader
from torch import nn

from lightning_gradcam import GradCAMCallback

pytestmark = pytest.mark.timeout(300)
PREFIX = f"gradcam/{LAYER}/gradcam"
VAL_IMAGES, VAL_BATCH = 24, 8


class Counting(TinyPL):
    """Counts its forwards; its validation_step checks what its forward hands back."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return super().forward(x)

    def validation_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        logits = self(x)
        assert not logits.requires_grad  # as under Lightning's no_grad, hooks or not
        assert torch.equal(logits, self.net(x))  # the submodule call is not watched
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())


class Normalising(Counting):
    """A validation_step that normalises the images before calling the module."""

    def validation_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        self.log("val_loss", nn.functional.cross_entropy(self((x - 0.5) * 2), y))


class ForwardsPerBatch(pl.Callback):
    """Forwards of the module from each validation batch's start to its end (listed after
    the GradCAMCallback, so the measure's own forward, if any, is inside)."""

    def __init__(self):
        self.per_epoch: list[list[int]] = []
        self._at_start = 0

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.per_epoch.append([])

    def on_validation_batch_start(self, trainer, pl_module, *args):
        self._at_start = pl_module.forwards

    def on_validation_batch_end(self, trainer, pl_module, *args):
        if not trainer.sanity_checking:
            self.per_epoch[-1].append(pl_module.forwards - self._at_start)


def _fit(root, module_class, callbacks, **kwargs):
    pl.seed_everything(123, verbose=False)
    module = module_class()
    trainer = make_trainer(pl, root, callbacks, logger=False, **kwargs)
    trainer.fit(module, val_dataloaders=val_loader(VAL_IMAGES, VAL_BATCH))
    return module, trainer


def _scalars(trainer, prefix="") -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def test_one_forward_per_batch_and_the_same_values_as_the_measures_own_forward(tmp_path):
    plain, plain_trainer = _fit(tmp_path / "plain", Counting, [])
    counter = ForwardsPerBatch()
    cb = GradCAMCallback(layer=LAYER, methods=("gradcam", "gradcam++"), metrics_on="validation")
    watched, trainer = _fit(tmp_path / "watched", Counting, [cb, counter])

    # Batch 0 of the first epoch: the measure's own forward (it finds and checks the layer);
    # every batch after it: validation_step's forward serves the measure too.
    assert counter.per_epoch == [[2, 1, 1], [1, 1, 1]]
    # The module's own validation metrics and the weights, bit for bit.
    assert _scalars(trainer, "val_") == _scalars(plain_trainer, "val_")
    for name, value in plain.state_dict().items():
        assert torch.equal(value, watched.state_dict()[name]), name

    # The same whole-set values as a fit whose step the measure cannot reuse, on the same
    # images and weights (that step calls the submodule, not the module explained).
    class CallsSubmodule(Counting):
        def validation_step(self, batch, batch_idx):
            x, y = self._xy(batch)
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    own = GradCAMCallback(layer=LAYER, methods=("gradcam", "gradcam++"), metrics_on="validation")
    _, own_trainer = _fit(tmp_path / "own", CallsSubmodule, [own])
    got, want = _scalars(trainer, "gradcam/"), _scalars(own_trainer, "gradcam/")
    assert set(got) == set(want)
    for method in ("gradcam", "gradcam++"):
        assert f"gradcam/{LAYER}/{method}/pointing_game" in got
    for tag, value in want.items():
        assert math.isclose(got[tag], value, rel_tol=1e-6, abs_tol=1e-7), (tag, got[tag], value)


def test_a_step_on_other_images_gets_the_measures_own_forward_said_once(tmp_path, caplog):
    counter = ForwardsPerBatch()
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation")
    with caplog.at_level(logging.INFO):
        _, trainer = _fit(tmp_path, Normalising, [cb, counter])
    assert counter.per_epoch == [[2, 2, 2], [2, 2, 2]]
    said = [r.getMessage() for r in caplog.records if "forward of its own" in r.getMessage()]
    assert len(said) == 1 and "other images than the batch's" in said[0]
    assert cb.whole_set.images == VAL_IMAGES
    assert 0.0 <= float(trainer.callback_metrics[f"{PREFIX}/energy_in_box"]) <= 1.0


@pytest.mark.parametrize("where", ["after the forward", "inside the forward, past the layer"])
def test_an_error_in_validation_step_leaves_no_hook_and_grad_mode_as_it_was(tmp_path, where):
    class FailsLate(Counting):
        def forward(self, x):
            logits = super().forward(x)
            if self._fails() and where.startswith("inside"):
                raise RuntimeError("the user's step failed")
            return logits

        def _fails(self):
            return not self.training and not self.trainer.sanity_checking and self.batch == 2

        def validation_step(self, batch, batch_idx):
            x, _ = self._xy(batch)
            self.batch = batch_idx
            self(x)
            if self._fails():
                raise RuntimeError("the user's step failed")

    cb = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation")
    pl.seed_everything(123, verbose=False)
    module = FailsLate()
    module.batch = -1
    trainer = make_trainer(pl, tmp_path, [cb], logger=False)
    with pytest.raises(RuntimeError, match="the user's step failed"):
        trainer.fit(module, val_dataloaders=val_loader(VAL_IMAGES, VAL_BATCH))
    assert torch.is_grad_enabled()
    for name, sub in module.named_modules():
        assert not sub._forward_hooks and not sub._forward_pre_hooks, name
    module.eval()
    module.batch = -1
    with torch.no_grad():
        assert not module(torch.rand(2, 3, SIZE, SIZE)).requires_grad


def test_a_head_that_computes_otherwise_under_autograd_is_never_reused(tmp_path, caplog):
    # Some kernels take another path when autograd records (attention backends, say): the
    # first batch compares the measure's own scores with the step's, bit for bit.
    class GradSensitive(Counting):
        def forward(self, x):
            logits = super().forward(x)
            return logits + 1e-4 if torch.is_grad_enabled() else logits

    _, plain_trainer = _fit(tmp_path / "plain", GradSensitive, [])
    counter = ForwardsPerBatch()
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation")
    with caplog.at_level(logging.INFO):
        _, trainer = _fit(tmp_path / "watched", GradSensitive, [cb, counter])
    assert counter.per_epoch == [[2, 2, 2], [2, 2, 2]]
    said = [r.getMessage() for r in caplog.records if "forward of its own" in r.getMessage()]
    assert len(said) == 1 and "other scores when autograd records" in said[0]
    assert _scalars(trainer, "val_") == _scalars(plain_trainer, "val_")


def test_a_compiled_network_gets_the_measures_own_forward_with_the_same_values(tmp_path, caplog):
    class Compiled(TinyPL):
        def __init__(self):
            super().__init__(compile_net=True)

    _, plain_trainer = _fit(tmp_path / "plain", Compiled, [])
    cb = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation")
    with caplog.at_level(logging.INFO):
        _, trainer = _fit(tmp_path / "compiled", Compiled, [cb])
    eager = GradCAMCallback(layer=LAYER, methods="gradcam", metrics_on="validation")
    _, eager_trainer = _fit(tmp_path / "eager", TinyPL, [eager])
    said = [r.getMessage() for r in caplog.records if "forward of its own" in r.getMessage()]
    assert len(said) == 1 and "torch.compile" in said[0]
    assert _scalars(trainer, "val_") == _scalars(plain_trainer, "val_")
    got, want = _scalars(trainer, PREFIX), _scalars(eager_trainer, PREFIX)
    assert set(got) == set(want) and f"{PREFIX}/energy_in_box" in got
    for tag, value in want.items():
        assert math.isclose(got[tag], value, rel_tol=1e-6, abs_tol=1e-7), (tag, got[tag], value)
