"""Image-path expansion, output names and atomic writing (shared with the detection CLI)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lightning_gradcam.io import (
    ImageInputError,
    expand_image_paths,
    output_names,
    read_image,
    sample_image,
    write_images,
)


def test_expand_file_folder_and_recursive_glob(tmp_path):
    write_images(
        {
            tmp_path / "b.png": sample_image(16),
            tmp_path / "a.JPG": sample_image(16),
            tmp_path / "sub" / "c.png": sample_image(16),
        }
    )
    (tmp_path / "readme.md").write_text("x")
    assert expand_image_paths(tmp_path / "b.png") == [tmp_path / "b.png"]
    assert expand_image_paths(tmp_path) == [tmp_path / "a.JPG", tmp_path / "b.png"]
    found = expand_image_paths(str(tmp_path / "**" / "*.png"))
    assert found == [tmp_path / "b.png", tmp_path / "sub" / "c.png"]


def test_clashing_stems_get_their_folder_in_the_name(tmp_path):
    paths = [tmp_path / "x" / "cat.png", tmp_path / "y" / "cat.jpg", tmp_path / "dog.png"]
    assert output_names(paths) == ["x_cat_png", "y_cat_jpg", "dog"]
    assert output_names(paths[1:]) == ["cat", "dog"]


def test_read_image_gives_rgb_and_converts_grey(tmp_path):
    rgb = np.zeros((6, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((4, 4), 77, np.uint8))
    assert read_image(tmp_path / "red.png")[0, 0].tolist() == [200, 0, 0]
    assert read_image(tmp_path / "grey.png").shape == (4, 4, 3)
    with pytest.raises(ImageInputError, match="cannot read image"):
        read_image(tmp_path / "missing.png")


def test_write_images_is_all_or_nothing_and_keeps_other_files(tmp_path):
    (tmp_path / "old.png").write_bytes(b"previous run")
    pictures = {tmp_path / "ok.png": sample_image(16), tmp_path / "bad.xyz": sample_image(16)}
    with pytest.raises(ImageInputError, match="cannot write bad.xyz: OpenCV has no .xyz encoder"):
        write_images(pictures)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]
    written = write_images({tmp_path / "new" / "ok.png": sample_image(16)})
    assert written == [tmp_path / "new" / "ok.png"]
    assert read_image(written[0]).shape == (16, 16, 3)
    assert not [p for p in Path(tmp_path / "new").iterdir() if p.name.endswith(".tmp")]
