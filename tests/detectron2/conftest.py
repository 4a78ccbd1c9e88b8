"""Session fixtures for the detectron2 tests: tiny seeded detectors, built once."""

from __future__ import annotations

import pytest
import torch
from d2_helpers import KINDS, build, zero_box_regression


@pytest.fixture(scope="session")
def models() -> dict[str, torch.nn.Module]:
    return {kind: build(kind) for kind in KINDS}


@pytest.fixture(scope="session")
def stock_models(models) -> dict[str, torch.nn.Module]:
    stock = {}
    for kind in KINDS:
        model = build(kind, cam=False, seed=1)
        model.load_state_dict(models[kind].state_dict())
        stock[kind] = model
    return stock


@pytest.fixture(scope="session")
def zeroed_models() -> dict[str, torch.nn.Module]:
    return {kind: zero_box_regression(build(kind, seed=2)) for kind in KINDS}
