"""What ``GradCAMCallback`` explains: the LightningModule, or the network ``model=`` names in
it, and whether a failure came from calling that module on the images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.layers import unwrap_model
from ..core.resilience import is_out_of_memory

__all__ = ["explained_network", "ForwardWatch", "not_callable_on_images"]


def explained_network(pl_module: Any, model: str | Callable[[Any], nn.Module] | None) -> nn.Module:
    """The module explained: ``pl_module`` itself (``model=None``), what the callable
    ``model(pl_module)`` returns, or the attribute path ``model`` inside it
    (``"net.backbone"``); an error lists the submodules where the path breaks."""
    if model is None:
        return pl_module
    if callable(model):
        network = model(pl_module)
        what = "the model= callable returned"
    else:
        network = unwrap_model(pl_module)
        done: list[str] = []
        for part in model.split("."):
            if not hasattr(network, part):
                children = [name for name, _ in network.named_children()]
                where = ".".join(done) or type(pl_module).__name__
                raise AttributeError(
                    f"model={model!r}: {where} has no attribute {part!r}; its "
                    f"submodules are {children}. Pass the attribute path of the network "
                    "inside the LightningModule, or a callable pl_module -> nn.Module"
                )
            network = getattr(network, part)
            done.append(part)
        what = f"model={model!r} names"
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"{what} a {type(network).__name__}, not a torch.nn.Module; name the network "
            "whose forward maps images to class scores"
        )
    return network


class ForwardWatch:
    """Whether a module's forward was entered and whether it returned, during a block: an
    exception raised between the two came from calling the module on the images."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.entered = self.returned = False

    def __enter__(self) -> ForwardWatch:
        self._handles = [
            self.module.register_forward_pre_hook(lambda *_: setattr(self, "entered", True)),
            self.module.register_forward_hook(lambda *_: setattr(self, "returned", True)),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def failed_inside(self, error: BaseException) -> bool:
        """Whether ``error`` was raised inside the module's own forward (entered, never
        returned), and was not running out of memory: the module cannot take the images."""
        return self.entered and not self.returned and not is_out_of_memory(error)


def not_callable_on_images(
    network: nn.Module, samples: Any, task: str, error: BaseException
) -> TypeError:
    """The error for a module whose forward cannot take the samples: say to pass ``model=``
    (or a callable ``target=``, or ``task=``), keeping the original error's first line."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    images = getattr(samples, "images", None)
    what = (
        f"the images {tuple(images.shape)}"
        if isinstance(images, torch.Tensor)
        else (f"the {len(samples)} images")
    )
    return TypeError(
        f"GradCAMCallback could not call {type(network).__name__} on {what} it explains "
        f"as a {task} model ({type(error).__name__}: {first}). "
        "The module explained must map the images to its outputs (class scores, "
        "detections or segmentation logits): pass model= (the attribute path of the network "
        "inside the LightningModule, e.g. model='model' or model='net.backbone', or a "
        "callable pl_module -> nn.Module), a callable target= that picks the scores from "
        "its output, or task= when the task was not recognised."
    )
