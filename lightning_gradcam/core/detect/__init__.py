"""The detection kernel: what every detector side (torchvision, detectron2, YOLO) shares.

A detector side knows only what is its own: which module is the head (or pooler), how its
candidates map to output rows (proposal row, or level and anchor row, and class channel),
and its own post-processing (NMS). Everything else is here, framework-free (torch only):

- :mod:`.recorders` -- :class:`InputRecorder`, a forward hook keeping a module's inputs and
  output per call (the padded batch at the backbone, a pooler's features and boxes, a dense
  head's per-level inputs);
- :mod:`.graph` -- :func:`depends_on`, :func:`is_clone_of`, :func:`require_dependence`;
- :mod:`.rows` -- :func:`own_gradients` (each target's gradient at its own row of a tensor,
  in memory-budgeted rounds, :data:`lightning_gradcam.core.gradients.GRADIENT_BUDGET`) and
  :func:`level_gradients` (one-stage heads called once per level);
- :mod:`.pullback` -- :func:`pooler_pullback` (per-ROI gradients pulled back through the
  framework's own pooler, given as a callable) and :func:`pull_back_to_layer` (from a
  reader's inputs to any image-level layer upstream);
- :mod:`.window` -- :func:`local_radius`, :func:`windowed_head_gradients` and
  :func:`level_input_gradients`: a dense head's per-detection gradients at its input, on one
  crop per detection (exact for heads of 'same' convolutions and pointwise modules);
- :mod:`.attach` -- :func:`attach_maps`, the CAM methods applied to each detection's
  (activation, gradient) and the maps placed in its image;
- :mod:`.options` -- ``methods=``, ``score=``, ``reshape=`` and ``choose=``, the options
  every side takes (:func:`check_options`, :func:`chosen_rows`).

A one-stage detector whose head outputs per-anchor class logits at several levels is
explained by: an :class:`InputRecorder` on the head (its per-level inputs), the targets
``logits[level][image, anchor row, class channel]``, :func:`level_gradients` at the head
inputs, :func:`pull_back_to_layer` to an image-level layer, :func:`attach_maps`. At an
image-level layer, a head :func:`local_radius` accepts takes its gradients at the head inputs
from :func:`level_input_gradients` (one small backward per level) before the pull-back.
"""

from .attach import attach_maps
from .graph import depends_on, is_clone_of, require_dependence
from .options import (
    SCORES,
    DetectionOptions,
    check_choose,
    check_options,
    check_score,
    chosen_rows,
)
from .pullback import pooler_pullback, pull_back_to_layer
from .recorders import InputRecorder
from .rows import level_gradients, own_gradients
from .window import (
    level_input_gradients,
    local_radius,
    receptive_radius,
    windowed_head_gradients,
)

__all__ = [
    "InputRecorder",
    "SCORES",
    "DetectionOptions",
    "attach_maps",
    "check_choose",
    "check_options",
    "check_score",
    "chosen_rows",
    "depends_on",
    "is_clone_of",
    "level_gradients",
    "level_input_gradients",
    "local_radius",
    "receptive_radius",
    "own_gradients",
    "pooler_pullback",
    "pull_back_to_layer",
    "require_dependence",
    "windowed_head_gradients",
]
