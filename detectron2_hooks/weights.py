"""Loading detectron2 weights without running code from the file: ``MODEL.WEIGHTS`` for the CLI.

Policy, by file ending:

- ``.pkl`` (detectron2 model zoo, Detectron/Caffe2 files): plain pickles of numpy arrays in
  dicts. They are read by an unpickler that resolves only the few globals numpy arrays need
  (``numpy...._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, ``numpy...._frombuffer``,
  ``numpy...scalar``, ``_codecs.encode``, ``collections.OrderedDict``); any other global (say
  ``os.system`` in a ``__reduce__``) is refused before it is called.
- anything else (``.pth``, ``.pt``, what ``DetectionCheckpointer.save`` writes):
  ``torch.load(weights_only=True)`` through ``lightning_gradcam.core.checkpoints.load_state_dict_file``.

URLs (``detectron2://...``, ``https://...``) are looked up in the iopath cache
(``$FVCORE_CACHE`` or ``~/.torch/iopath_cache``, where detectron2 itself keeps them) and
downloaded there only when missing.

``load_detector_weights`` then loads with ``DetectionCheckpointer`` (model-zoo name matching
included) and insists that every tensor of the model was in the file, with its shape:
explaining a detector with random heads would mean nothing.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from contextlib import contextmanager
from urllib.parse import urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from lightning_gradcam.core.checkpoints import (
    RANDOM_WEIGHTS,
    WeightsError,
    download_file,
    load_state_dict_file,
)
from lightning_gradcam.core.command_line import first_line

__all__ = [
    "WeightsError",
    "RANDOM_WEIGHTS",
    "is_url",
    "url_cache_path",
    "resolve_weights",
    "load_pickled_arrays",
    "SafeDetectionCheckpointer",
    "load_detector_weights",
    "quiet_loggers",
]

_URL_PREFIXES = ("detectron2://", "http://", "https://")
_D2_URL_ROOT = "https://dl.fbaipublicfiles.com/detectron2/"

# (module, name) the array unpickler resolves; numpy 1 and numpy 2 spellings.
_ALLOWED_GLOBALS = frozenset(
    [
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
        ("collections", "OrderedDict"),
    ]
)


def is_url(path: str) -> bool:
    """Whether ``MODEL.WEIGHTS`` names a URL detectron2's ``PathManager`` would download."""
    return path.startswith(_URL_PREFIXES)


def url_cache_path(url: str) -> str:
    """Where iopath keeps (or would keep) the download of ``url``: ``$FVCORE_CACHE`` (default
    ``~/.torch/iopath_cache``) / the URL's folder path / its file name."""
    if url.startswith("detectron2://"):
        url = _D2_URL_ROOT + url[len("detectron2://") :]
    parsed = urlparse(url)
    cache = os.path.expanduser(os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache"))
    folder = os.path.dirname(parsed.path.lstrip("/"))
    return os.path.join(cache, folder, url.split("/")[-1])


def resolve_weights(weights: str, download_timeout: float = 20.0) -> str:
    """A local file for ``MODEL.WEIGHTS``: the path itself, or a URL's cached download.

    Raises:
        WeightsError: empty, a missing file or folder, or a URL neither cached nor
            downloadable; each message says to pass ``--opts MODEL.WEIGHTS /path/to/model.pkl``.
    """
    hint = "pass a local checkpoint: --opts MODEL.WEIGHTS /path/to/model.pkl (or .pth)"
    if not weights:
        raise WeightsError(
            f"MODEL.WEIGHTS is empty, so the detector would have random weights; {hint} "
            f"(or MODEL.WEIGHTS {RANDOM_WEIGHTS} to run with random weights, meaningless maps)"
        )
    if not is_url(weights):
        if os.path.isfile(weights):
            return weights
        what = "is a folder" if os.path.isdir(weights) else "does not exist"
        raise WeightsError(f"MODEL.WEIGHTS {weights} {what}; {hint}")
    cached = url_cache_path(weights)
    if os.path.isfile(cached):
        return cached
    try:
        _download(weights, cached, download_timeout)
    except Exception as exc:  # any download failure means "cannot download"
        raise WeightsError(
            f"cannot download MODEL.WEIGHTS {weights} ({first_line(exc)}) and it is not in the "
            f"cache ({cached}); {hint}"
        ) from None
    return cached


def _download(url: str, path: str, timeout: float) -> None:
    """Fetch ``url`` (``detectron2://`` resolved) to ``path``, without a progress bar."""
    if url.startswith("detectron2://"):
        url = _D2_URL_ROOT + url[len("detectron2://") :]
    download_file(url, path, timeout=timeout, progress=False)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")


def load_pickled_arrays(path: str | os.PathLike) -> object:
    """Unpickle a ``.pkl`` of dicts of numpy arrays (detectron2 / Detectron model-zoo files,
    Python 2 pickles included), resolving only numpy's array globals.

    Raises:
        WeightsError: the file holds any other Python object (it could run code), or is not
            a pickle.
    """
    if zipfile.is_zipfile(path):
        # torch.save writes a zip archive: a .pth / .pt checkpoint with the wrong ending.
        raise WeightsError(
            f"cannot read weights {path}: it is a torch checkpoint (a zip archive written by "
            "torch.save), not a pickle of arrays; rename it to .pth, which is read with "
            "torch.load(weights_only=True)"
        )
    try:
        with open(path, "rb") as file:
            return _ArrayUnpickler(file, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("GLOBAL "):
            refused = str(exc).split()[1]
            raise WeightsError(
                f"refusing to load {path}: it holds a pickled Python object ({refused}) that "
                "could run code when loaded; .pkl weights may hold only numpy arrays in dicts "
                "(detectron2 model-zoo files do); re-save the state dict with "
                'torch.save({"model": model.state_dict()}, "model.pth"), from a source you trust'
            ) from None
        raise WeightsError(f"cannot read weights {path}: not a pickle of arrays") from None
    except Exception as exc:  # a truncated or foreign file
        raise WeightsError(f"cannot read weights {path}: {first_line(exc)}") from None


def _as_state_dict(data: object, path: str) -> dict:
    """The ``DetectionCheckpointer`` checkpoint dict for an unpickled ``.pkl``: model-zoo
    files as they are; Detectron/Caffe2 blobs with name matching, momenta dropped."""
    if not isinstance(data, Mapping):
        raise WeightsError(f"{path} holds a {type(data).__name__}, not a dict of arrays")
    if "model" in data and "__author__" in data:
        checkpoint = dict(data)
    else:
        blobs = data.get("blobs", data)
        if not isinstance(blobs, Mapping):
            raise WeightsError(f"{path} holds no dict of arrays")
        blobs = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
        checkpoint = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
    model = checkpoint["model"]
    bad = [k for k, v in model.items() if not isinstance(v, (np.ndarray, torch.Tensor))]
    bad += [k for k, v in model.items() if isinstance(v, np.ndarray) and v.dtype == object]
    if bad:
        raise WeightsError(f"{path}: entry {bad[0]!r} is not a numeric array")
    return checkpoint


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that never unpickles arbitrary objects (see the module
    docstring), and keeps the key report of its last load in ``self.incompatible``."""

    incompatible = None

    def _load_file(self, filename: str) -> dict:
        if filename.endswith(".pkl"):
            return _as_state_dict(load_pickled_arrays(filename), filename)
        return {"model": load_state_dict_file(filename)}

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


@contextmanager
def quiet_loggers(*loggers: str):
    """Silence the named loggers' info and warnings (we report problems ourselves)."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def load_detector_weights(model: nn.Module, path: str) -> None:
    """Load a local checkpoint file into ``model`` with :class:`SafeDetectionCheckpointer`.

    Raises:
        WeightsError: unsafe or unreadable file (see the module docstring), or weights that do
            not fit: a tensor of the model missing from the file or of another shape. Extra
            tensors in the file (a mask head the config does not build) are ignored.
    """
    checkpointer = SafeDetectionCheckpointer(model)
    with quiet_loggers("fvcore", "detectron2"):
        try:
            checkpointer.load(path)
        except WeightsError:
            raise
        except Exception as exc:  # whatever a foreign checkpoint makes the loader raise
            raise WeightsError(f"cannot load weights {path}: {first_line(exc)}") from None
    report = checkpointer.incompatible
    if report is None:
        return
    total = len(model.state_dict())
    problems = []
    if report.incorrect_shapes:
        key, given, expected = report.incorrect_shapes[0]
        problems.append(
            f"{len(report.incorrect_shapes)} tensors have another shape (e.g. {key!r} is "
            f"{tuple(given)} in the file, {tuple(expected)} in the model)"
        )
    if report.missing_keys:
        problems.append(
            f"{len(report.missing_keys)} of the model's {total} tensors are missing "
            f"(e.g. {report.missing_keys[0]!r})"
        )
    if problems:
        raise WeightsError(
            f"the weights in {path} do not fit the model of this config: {'; '.join(problems)}; "
            "pass the --config-file the checkpoint was trained with (and its --opts, e.g. "
            "MODEL.ROI_HEADS.NUM_CLASSES)"
        )
