"""Image files for both command lines: expand a path, read, write atomically.

Images are ``uint8 (H, W, 3)`` RGB numpy arrays throughout. Nothing here knows about argparse
or a network, so the detection command uses it as the classification one does. Errors are
``ImageInputError`` (a ``ValueError``) with one-line messages.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInputError",
    "expand_image_paths",
    "read_image",
    "output_names",
    "write_images",
]

#: File endings taken from a folder (any file named explicitly or by a glob is tried).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_GLOB_CHARS = set("*?[")


class ImageInputError(ValueError):
    """An image path that names nothing, or a file that is not a readable image."""


def expand_image_paths(spec: str | os.PathLike) -> list[Path]:
    """The image files named by ``spec``: a file; a folder (its files with an image ending,
    not recursive); or a glob pattern (``**`` recurses). Sorted by path.

    Raises:
        ImageInputError: nothing exists at ``spec``, the folder holds no images, or the
            pattern matches no file.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise ImageInputError(
                f"folder {text} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        return found
    if _GLOB_CHARS & set(text):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        found = [p for p in found if p.is_file()]
        if not found:
            raise ImageInputError(f"the pattern {text!r} matches no file")
        return found
    raise ImageInputError(f"image path {text} does not exist (give a file, a folder or a glob)")


def _quiet_decode(data: np.ndarray) -> np.ndarray | None:
    """``cv2.imdecode`` with OpenCV's own log silenced: a truncated file would print its
    ``[ WARN ]`` line beside our one-line error."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(data, cv2.IMREAD_COLOR)
    finally:
        cv2.utils.logging.setLogLevel(level)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``uint8 (H, W, 3)`` RGB (grey and alpha images converted).

    Raises:
        ImageInputError: the file is missing or cannot be decoded.
    """
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)  # unlike cv2.imread, any path
    except OSError as exc:
        raise ImageInputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    image = _quiet_decode(data) if data.size else None
    if image is None:
        raise ImageInputError(
            f"cannot read image {path}: not a decodable image file (empty, truncated, or a "
            "format OpenCV does not read)"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def output_names(paths: Sequence[Path]) -> list[str]:
    """A file-name stem per input image: its own stem, or, where stems clash (``a/x.png``
    and ``b/x.jpg``), its path relative to the inputs' common folder, ``/`` -> ``_``, with
    the extension kept."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    names = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) == 1:
            names.append(stem)
        else:
            relative = path.resolve().relative_to(root)
            names.append(str(relative).replace(os.sep, "_").replace(".", "_"))
    return names


def _encode(path: Path, image: np.ndarray) -> bytes:
    ext = path.suffix.lower() or ".png"
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    try:
        ok, data = cv2.imencode(ext, bgr)
    except cv2.error:
        ok = False
    if not ok:
        raise ImageInputError(f"cannot write {path.name}: OpenCV has no {ext} encoder")
    return data.tobytes()


def write_images(pictures: Mapping[str | os.PathLike, np.ndarray]) -> list[Path]:
    """Write ``{path: RGB image}``; the format follows each path's ending.

    All pictures are encoded before the first is written, and each file is written to a
    temporary name in its folder and renamed into place, so a failure never leaves a
    half-written picture (an existing file of that name stays as it was until replaced).
    Folders are created as needed.
    """
    encoded = [(Path(p), _encode(Path(p), image)) for p, image in pictures.items()]
    umask = os.umask(0)
    os.umask(umask)
    written = []
    for path, data in encoded:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.chmod(temp, 0o666 & ~umask)  # mkstemp makes it private; a plain file is not
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        written.append(path)
    return written
