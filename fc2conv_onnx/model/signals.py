"""Interruptions (Ctrl-C, SIGTERM, SIGHUP) as exceptions that unwind, so that a run removes its temporaries on the
way out; and blocks they wait for, so that what must happen together does (a file made and recorded, a commit and
the removals after it, a video frame's records and its drawing)."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Dict, Iterator


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so that temporaries are removed on the way out."""

    def __init__(self, number: int) -> None:
        super().__init__(f"signal {number}")
        self.number = number


_STOPS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
#: How deep in `held` blocks the main thread is, and the signals that arrived meanwhile.
_held: Dict[str, Any] = {"depth": 0, "pending": []}


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM and SIGHUP raise `Terminated`, instead of
    ending the process where it stands; inside a `held` block they wait for its end. Only in the
    main thread, where Python runs signal handlers."""
    try:
        previous = {number: signal.signal(number, _on_signal) for number in _STOPS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _on_signal(number: int, frame) -> None:
    if _held["depth"]:
        _held["pending"].append(number)
        return
    _raise_for(number)


def _raise_for(number: int) -> None:
    if number == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(number)


@contextmanager
def held() -> Iterator[None]:
    """Within the block, signals wait for its end: a file is made and recorded together, the commit and the
    removals after it happen together, a video frame's records and its drawing are written together. (Masking
    the signal would not do: onnxruntime's and numpy's threads take it, and Python then runs the handler in the
    main thread at once.)"""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if not _held["depth"] and _held["pending"]:
            number = _held["pending"][0]
            _held["pending"].clear()
            _raise_for(number)
