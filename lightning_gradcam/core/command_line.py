"""What the two commands (``lightning-gradcam``, ``detectron2-gradcam``) share: integer
argument types, the ``--device`` option and its checks, the one-line error, and the wrapper
that turns a run into an exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "AUTO_DEVICE",
    "DeviceError",
    "add_device_argument",
    "first_line",
    "non_negative_int",
    "report_error",
    "resolve_device",
    "run_command",
]

#: ``--device auto``: CUDA when this machine has it, else the CPU.
AUTO_DEVICE = "auto"


class DeviceError(ValueError):
    """A device that is no torch device, or that this machine does not have."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): what a
    command prints after ``prog: error:``."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def non_negative_int(text: str, hint: str = "") -> int:
    """``argparse`` type: an integer >= 0 (``hint`` is appended to the error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative{hint}")
    return value


def report_error(prog: str, message: str) -> int:
    """Print ``prog: error: message`` as one line on stderr; return exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], int],
) -> int:
    """Parse ``argv`` and run ``body(args)``; return its status. argparse's usage errors
    return 2 (and ``--help`` 0) instead of exiting; Ctrl-C returns 130 with one line."""
    try:
        return body(parser.parse_args(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def add_device_argument(parser: argparse.ArgumentParser, auto: str) -> None:
    """Add ``--device`` (default ``auto``, whose meaning for this command is ``auto``) to
    ``parser``; check the value with :func:`resolve_device` before any work."""
    parser.add_argument(
        "--device",
        default=AUTO_DEVICE,
        help=f"torch device: auto (the default: {auto}), cpu, cuda, cuda:1; an explicit cuda "
        "on a machine without CUDA is an error (exit status 2)",
    )


def resolve_device(
    text: str, source: str = "argument --device", fix: str = "use --device cpu"
) -> torch.device:
    """The torch device ``text`` names, checked on this machine. ``auto``: CUDA if
    ``torch.cuda.is_available()``, else the CPU.

    A device asked for by name must be usable: ``cuda`` without CUDA, ``cuda:N`` beyond the
    visible devices, or a backend that cannot allocate a tensor is refused. ``source`` (what
    asked, e.g. ``"argument --device"`` or ``"MODEL.DEVICE cuda"``) starts the message and
    ``fix`` ends it, so the one line says what was wrong and what to pass instead.

    Raises:
        DeviceError: ``text`` is no torch device, or this machine does not have it.
    """
    if text == AUTO_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(
            f"{source}: {text!r} is not a torch device (auto, cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{source}: CUDA is not available here (torch.cuda.is_available() is False); {fix}"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{source}: {text} does not exist; {count} CUDA device(s) visible")
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as exc:
            raise DeviceError(
                f"{source}: {text} cannot be used ({first_line(exc)}); {fix}"
            ) from None
    return device
