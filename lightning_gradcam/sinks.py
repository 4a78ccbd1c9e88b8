"""Where the callback's pictures and numbers go: TensorBoard, or PNG files and a CSV."""

from __future__ import annotations

import csv
import os

import cv2
import numpy as np

__all__ = ["TensorBoardSink", "FolderSink"]


class TensorBoardSink:
    """Writes through a ``SummaryWriter`` (a Lightning ``TensorBoardLogger.experiment``)."""

    def __init__(self, writer: object):
        self.writer = writer

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """``image``: ``uint8 (H, W, 3)`` RGB."""
        self.writer.add_image(tag, image, global_step=step, dataformats="HWC")

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        flush = getattr(self.writer, "flush", None)
        if callable(flush):
            flush()


class FolderSink:
    """Without TensorBoard: ``<root>/<tag>/step_<step>.png`` per image, and every scalar as a
    row ``tag,step,value`` of ``<root>/scalars.csv``."""

    def __init__(self, root: str):
        self.root = root

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        folder = os.path.join(self.root, *tag.split("/"))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step_{step:07d}.png")
        if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")

    def scalar(self, tag: str, value: float, step: int) -> None:
        os.makedirs(self.root, exist_ok=True)
        path = os.path.join(self.root, "scalars.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["tag", "step", "value"])
            writer.writerow([tag, step, f"{value:.6g}"])

    def flush(self) -> None:
        pass
