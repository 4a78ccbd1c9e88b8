"""What the two commands (``lightning-gradcam``, ``detectron2-gradcam``) share: integer
argument types, the one-line error, and the wrapper that turns a run into an exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["first_line", "non_negative_int", "report_error", "run_command"]


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
