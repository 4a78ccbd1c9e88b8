"""Framework-free CAM machinery: depends on torch (and OpenCV for rendering) only.

Nothing here imports Lightning or detectron2; the callback, the detectron2 hook and the
command lines build on these pieces.
"""
