"""Fixtures for the command-line tests: random-weight checkpoints and generated images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_weights import random_state_dict

from lightning_gradcam.io import sample_image, write_images
from lightning_gradcam.models.networks import SEED_NETWORKS


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``{network: path}`` of random-weight state dicts for the seed's eight networks."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name in SEED_NETWORKS:
        paths[name] = folder / f"{name}.pth"
        torch.save(random_state_dict(name), paths[name])
    return paths


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """A folder with two generated images of different sizes and formats, and a text file
    that folder expansion must skip."""
    folder = tmp_path_factory.mktemp("images")
    write_images(
        {
            folder / "scene_a.png": sample_image(96, seed=1),
            folder / "scene_b.jpg": sample_image(120, seed=2)[:, :100],
        }
    )
    (folder / "notes.txt").write_text("not an image")
    return folder
