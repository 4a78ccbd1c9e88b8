"""What a reader sees in a caption band, measured so that it holds across OpenCV versions.

OpenCV's anti-aliased Hershey text changes between releases: 5.x draws small text thinner
and darker than 4.x (the brightest pixel of "iter 3: no detections" in a 14-pixel band is
243 with 4.8-4.12 and 122 with 5.1). So no test asks for an absolute brightness. Text is
the pixels that stand out from the band's own background (its median luminance) by at
least ``INK_CONTRAST`` of the largest difference the background allows.
"""

from __future__ import annotations

import numpy as np

#: A pixel is ink when ``|L - L_background| >= INK_CONTRAST * max(255 - L_bg, L_bg)``.
INK_CONTRAST = 0.25


def ink(band: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the text pixels of an ``(H, W, 3)`` uint8 band."""
    luminance = band.astype(np.float32).mean(axis=2)
    background = float(np.median(luminance))
    return np.abs(luminance - background) >= INK_CONTRAST * max(255.0 - background, background)


def assert_caption_visible(band: np.ndarray, text: str) -> None:
    """The band holds text a reader can see: at least one ink pixel per printed character.
    (The tightest case measured: "iter 3: no detections" shrunk into a 30-pixel-wide band
    gets 1.7 ink pixels per character with OpenCV 5.0, 2.1 with 5.1, 3.7 with 4.8-4.12.)"""
    printed = sum(not c.isspace() for c in text)
    found = int(ink(band).sum())
    assert found >= printed, (
        f"caption {text!r}: {found} pixels stand out from the band's background, "
        f"fewer than its {printed} printed characters"
    )
