"""Random-weight state dicts for torchvision networks, fast (no real initialisation)."""

from __future__ import annotations

import torch
import torchvision


def random_state_dict(name: str, num_classes: int | None = None, seed: int = 0) -> dict:
    """A state dict for torchvision's ``name`` with random (He-scaled) weights, made from the
    shapes of a meta-device model: no slow initialisation of the real network. Stored in
    float16 to halve the files (vgg's are 270 MB then); the loader converts to float32."""
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    if name in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=True, init_weights=False)  # as torchvision's own files
    generator = torch.Generator().manual_seed(seed)
    state = {}
    with torch.device("meta"):
        shapes = torchvision.models.get_model(name, **kwargs).state_dict()
    for key, meta in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.zeros(meta.shape, dtype=torch.float16)
        elif meta.dim() == 1:  # BatchNorm scale, running_var
            state[key] = torch.ones(meta.shape, dtype=torch.float16)
        else:
            bound = (6.0 / meta[0].numel()) ** 0.5
            weight = torch.empty(meta.shape).uniform_(-bound, bound, generator=generator)
            state[key] = weight.half()
    return state
