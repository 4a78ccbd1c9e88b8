"""What ``score=`` may name: the kernel's check (``lightning_gradcam.core.detect.options``),
imported here by the config and the detection selection."""

from __future__ import annotations

from lightning_gradcam.core.detect.options import SCORES, check_score

__all__ = ["SCORES", "check_score"]
