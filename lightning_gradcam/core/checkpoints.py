"""Weights files and their download, for both command lines.

``load_state_dict_file`` reads a state dict with ``torch.load(weights_only=True)`` (a file
that would run code when unpickled is refused); ``download_file`` fetches a URL into place
under ``socket_timeout``, so a machine without a network fails at once, not after minutes.
Nothing here knows about torchvision or detectron2.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import socket
import zipfile
from collections.abc import Iterator, Mapping

import torch

from .command_line import first_line

__all__ = [
    "RANDOM_WEIGHTS",
    "WeightsError",
    "load_state_dict_file",
    "socket_timeout",
    "download_file",
]

#: The weights value (``--weight-path``, ``MODEL.WEIGHTS``) that asks for random
#: initialisation; maps are then meaningless.
RANDOM_WEIGHTS = "random"


class WeightsError(ValueError):
    """Weights that cannot be read, are unsafe, or do not fit the network."""


def _unwrap_checkpoint(obj: object, path: str) -> dict[str, torch.Tensor]:
    for _ in range(2):  # {"state_dict": {...}} or {"model": {...}}, as training scripts save
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in ("state_dict", "model") if k in obj), None)
            if isinstance(inner, Mapping):
                obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict; save the weights with "
            "torch.save(model.state_dict(), path)"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path} holds no tensors; save torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel / DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` on the CPU.

    New-format (zip) files are memory-mapped, so a large file costs no memory until used.

    Raises:
        WeightsError: the file is missing, unreadable, not a state dict, or holds pickled
            objects other than tensors (which ``weights_only`` refuses to run).
    """
    path = str(path)
    if not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "no such file"
        raise WeightsError(f"cannot read weights {path}: {what}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)|Unsupported class|call reduce", str(exc))
        if refused:
            what = f" ({refused.group(1)})" if refused.group(1) else ""
            raise WeightsError(
                f"refusing to load {path}: it holds a pickled Python object{what} that could "
                "run code when loaded; only state dicts of tensors are read "
                "(torch.load weights_only=True): re-save the weights with "
                "torch.save(model.state_dict(), path), from a source you trust"
            ) from None
        raise WeightsError(f"cannot read weights {path}: not a PyTorch state-dict file") from None
    except Exception as exc:  # whatever a corrupt or foreign file makes the loader raise
        raise WeightsError(f"cannot read weights {path}: {first_line(exc)}") from None
    return _unwrap_checkpoint(obj, path)


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Give up a network read after ``seconds`` without data, for the block only."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_file(
    url: str,
    path: str | os.PathLike,
    timeout: float = 20.0,
    hash_prefix: str | None = None,
    progress: bool = True,
) -> None:
    """Download ``url`` to ``path`` (folders made), giving up after ``timeout`` seconds
    without data. ``torch.hub.download_url_to_file`` writes a temporary file next to
    ``path`` and moves it into place (checking ``hash_prefix`` of its SHA-256 first), so a
    failed download leaves no partial file. Errors propagate: callers word the message."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with socket_timeout(timeout):
        torch.hub.download_url_to_file(url, str(path), hash_prefix, progress=progress)
