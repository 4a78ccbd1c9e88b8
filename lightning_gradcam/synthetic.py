"""The generated shapes data, also reachable as ``lightning_gradcam.synthetic`` (examples and
user code); it lives in ``core`` so that ``detectron2_hooks`` imports ``core`` only."""

from .core.synthetic import SHAPE_NAMES, ShapesBatch, draw_scene, make_shapes

__all__ = ["SHAPE_NAMES", "ShapesBatch", "make_shapes", "draw_scene"]
