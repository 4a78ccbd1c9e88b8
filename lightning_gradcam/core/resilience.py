"""An instrument must not take down the run it watches: guarded passes and out-of-memory retries.

``PassGuard.run(what, fn)`` runs one pass. An exception becomes a one-line warning (what failed,
and why), the pass is reported skipped and training goes on; after ``max_failures`` failed passes
in a row the guard switches itself off, with a warning, and later passes are not run at all.
``on_error="raise"`` lets the exception through instead (with a note saying so).

``run_in_chunks(run, total, merge)`` runs ``run(0, total)``; when that runs out of memory
(``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` whose message says so) it frees the
cached memory and goes on with chunks of half the size, ``run(start, stop)`` each, down to one
item, and merges the parts in order. A CAM pass is per image (each map depends on its own image
only), so chunking gives the same maps as the single pass. ``PassGuard.run_chunked`` combines
both and remembers the chunk size that fitted, so later passes start there.

Framework-free: torch only. Used by the Lightning callback and the detectron2 hook alike.
"""

from __future__ import annotations

import dataclasses
import gc
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

__all__ = [
    "ON_ERROR_CHOICES",
    "check_on_error",
    "is_out_of_memory",
    "run_in_chunks",
    "concat_batches",
    "PassOutcome",
    "PassGuard",
]

T = TypeVar("T")

ON_ERROR_CHOICES = ("warn", "raise")

# Messages of allocators that ran out: CUDA ("CUDA out of memory", "CUDA error: out of
# memory"), MPS ("MPS backend out of memory"), XPU, and the CPU allocator.
_OOM_TEXT = ("out of memory", "can't allocate memory")


def check_on_error(value: object) -> str:
    """``value`` if it is ``"warn"`` or ``"raise"``, else a ``ValueError`` saying so."""
    if not isinstance(value, str) or value not in ON_ERROR_CHOICES:
        raise ValueError(
            f"on_error must be 'warn' (a failed pass is skipped with a warning and training "
            f"goes on) or 'raise' (it stops the run), got {value!r}"
        )
    return value


def _oom_types() -> tuple[type[BaseException], ...]:
    types = [
        getattr(torch, "OutOfMemoryError", None),
        getattr(torch.cuda, "OutOfMemoryError", None),
    ]
    return tuple(t for t in types if isinstance(t, type))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device (or host) ran out of memory."""
    if isinstance(error, _oom_types()):
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return any(marker in text for marker in _OOM_TEXT)
    return False


def _release_memory() -> None:
    gc.collect()  # the failed attempt's frames may sit in reference cycles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_in_chunks(
    run: Callable[[int, int], T],
    total: int,
    merge: Callable[[Sequence[T]], T],
    chunk_size: int | None = None,
    on_retry: Callable[[int, str], None] | None = None,
) -> T:
    """``run(0, total)``, or the same work in consecutive chunks when memory runs out.

    Args:
        run: computes the result for items ``[start, stop)``.
        total: the number of items (images), ``>= 1``.
        merge: joins the parts' results, in order (``concat_batches`` for batch-first results).
        chunk_size: the first chunk size to try (default ``total``).
        on_retry: called with ``(new_chunk_size, reason)`` before each smaller try.

    Each out-of-memory failure halves the chunk size (rounding up) and goes on from the
    first item not yet done; parts already computed are kept. Raises the out-of-memory error
    when a single item does not fit, and any other error at once.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total must be a positive number of items, got {total!r}")
    chunk = total if chunk_size is None else max(1, min(int(chunk_size), total))
    parts: list[T] = []
    start = 0
    while start < total:
        stop = min(start + chunk, total)
        reason = None
        try:
            parts.append(run(start, stop))
        except Exception as error:
            if chunk <= 1 or not is_out_of_memory(error):
                raise
            reason = _one_line(error)
        if reason is None:
            start = stop
            continue
        # Out of the except block: the failed attempt's tensors can be freed now.
        _release_memory()
        chunk = (chunk + 1) // 2
        if on_retry is not None:
            on_retry(chunk, reason)
    return parts[0] if len(parts) == 1 else merge(parts)


def concat_batches(parts: Sequence[Any]) -> Any:
    """Join batch-first results along the batch: tensors by ``torch.cat(dim=0)``; dicts key by
    key; dataclasses field by field; lists by concatenation (one entry per item, e.g. a
    detector's one list per image); tuples element by element; anything else (a layer name)
    must be equal in every part and is kept."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts), dim=0)
    if isinstance(first, dict):
        if any(set(p) != set(first) for p in parts):
            raise ValueError("cannot join results whose dicts have different keys")
        return type(first)((k, concat_batches([p[k] for p in parts])) for k in first)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        fields = {
            f.name: concat_batches([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(first)
            if f.init
        }
        return dataclasses.replace(first, **fields)
    if isinstance(first, list):
        return [item for part in parts for item in part]
    if isinstance(first, tuple):
        if any(len(p) != len(first) for p in parts):
            raise ValueError("cannot join results whose tuples have different lengths")
        joined = [concat_batches([p[i] for p in parts]) for i in range(len(first))]
        return type(first)(*joined) if hasattr(first, "_fields") else tuple(joined)
    if first is None or all(p == first for p in parts[1:]):
        return first
    raise ValueError(f"cannot join results: {type(first).__name__} values differ between chunks")


def _one_line(error: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class PassOutcome(Generic[T]):
    """What became of one guarded pass.

    Attributes:
        ok: the pass ran to the end; ``value`` is its result.
        ran: the pass was tried (``False`` once the guard has switched off).
        reason: ``"<ErrorType>: <first line of the message>"`` when it failed.
        chunk_size: the chunk size that fitted, when the pass was split (``run_chunked``).
    """

    ok: bool
    value: T | None = None
    ran: bool = True
    reason: str | None = None
    chunk_size: int | None = None


class PassGuard:
    """Runs passes so that a failure never takes the run down (unless asked to).

    Args:
        owner: who speaks in the warnings (``"GradCAMCallback"``, ``"GradCAMHook"``).
        on_error: ``"warn"``: a failed pass is a one-line warning and is skipped; ``"raise"``:
            its exception goes through, with a note.
        max_failures: after this many failed passes in a row the guard switches off (one
            warning); a pass that succeeds resets the count.
        warn: how to say things (default ``warnings.warn(..., UserWarning)``); pass a no-op on
            ranks that should stay quiet.

    Attributes (read-only for callers): ``active``, ``consecutive_failures``,
    ``failed_passes`` (all failures so far), ``chunk_size`` (the last chunk size that fitted,
    or ``None`` while whole batches fit).
    """

    def __init__(
        self,
        owner: str = "GradCAMCallback",
        on_error: str = "warn",
        max_failures: int = 3,
        warn: Callable[[str], None] | None = None,
    ):
        self.owner = owner
        self.on_error = check_on_error(on_error)
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
            raise ValueError(f"max_failures must be an integer >= 1, got {max_failures!r}")
        self.max_failures = max_failures
        self._warn = warn or (lambda message: warnings.warn(message, UserWarning, stacklevel=4))
        self.active = True
        self.consecutive_failures = 0
        self.failed_passes = 0
        self.chunk_size: int | None = None

    def run(self, what: str, fn: Callable[[], T]) -> PassOutcome[T]:
        """Run ``fn()`` as the pass described by ``what`` (e.g. ``"the CAM pass at step
        120"``). Returns its outcome; raises only with ``on_error="raise"``."""
        if not self.active:
            return PassOutcome(ok=False, ran=False, reason="switched off")
        try:
            value = fn()
        except Exception as error:
            if self.on_error == "raise":
                if hasattr(error, "add_note"):  # Python 3.11+
                    error.add_note(
                        f"{self.owner}: {what} failed; on_error='raise' stops the run "
                        "(on_error='warn' would skip the pass and go on)"
                    )
                raise
            reason = _one_line(error)
        else:
            self.consecutive_failures = 0
            return PassOutcome(ok=True, value=value, chunk_size=self.chunk_size)
        self._failed(what, reason)
        return PassOutcome(ok=False, reason=reason)

    def run_chunked(
        self,
        what: str,
        run: Callable[[int, int], T],
        total: int,
        merge: Callable[[Sequence[T]], T] = concat_batches,
        then: Callable[[T], Any] | None = None,
    ) -> PassOutcome[T]:
        """``run`` guarded, through ``run_in_chunks``: on out-of-memory the pass is retried
        in halved chunks before it counts as failed; the size that fitted is kept for later
        passes. ``then(merged)`` (drawing and logging the result) runs inside the same
        guarded pass, once, on the whole result: its failure is this pass's failure; the
        outcome's ``value`` stays the merged result."""

        def chunked() -> T:
            value = run_in_chunks(run, total, merge, self.chunk_size, on_retry=self._retrying)
            if then is not None:
                then(value)
            return value

        return self.run(what, chunked)

    def _retrying(self, chunk: int, reason: str) -> None:
        self.chunk_size = chunk

    def _failed(self, what: str, reason: str) -> None:
        self.failed_passes += 1
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.max_failures:
            self.active = False
            self._warn(
                f"{self.owner}: {what} failed ({reason}); {self.consecutive_failures} passes "
                f"failed in a row, so {self.owner} switches itself off for the rest of the run"
            )
        else:
            self._warn(
                f"{self.owner}: {what} failed and was skipped ({reason}); training goes on "
                f"({self.consecutive_failures} failed in a row, off after {self.max_failures})"
            )
