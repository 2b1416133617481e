"""Ctrl-C and SIGTERM in a CLI, even while TVM runs.

Python runs a signal handler between bytecodes. While TVM works in C++, that is when TVM
calls back into Python (a pass written in Python, the FFI's signal check), and the
``KeyboardInterrupt`` raised there does not come out as one: the FFI turns it into a
``RuntimeError`` with an empty message, or a pass drops it outright (``FoldConstant`` skips
any expression whose evaluation fails and carries on). So the handler that :func:`handled`
installs also remembers the signal:

- :func:`received` tells the CLI that the exception it caught is an interrupt's wreckage;
- :func:`check`, called between pipeline phases, raises the interrupt that was swallowed.

Only a script's entry point installs the handler (:func:`dgms_tvm.cli.run_script`); nothing
does at import time or inside library functions. Used from Python, the library leaves signals
to its caller (Ctrl-C raises ``KeyboardInterrupt`` as usual) and :func:`check` does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None


def _handler(signum, _frame):
    global _received
    _received = signum
    raise KeyboardInterrupt


def received() -> int | None:
    """The signal received since :func:`handled` was entered, else None."""
    return _received


def check() -> None:
    """Raise ``KeyboardInterrupt`` when a signal came and TVM swallowed its exception."""
    if _received is not None:
        raise KeyboardInterrupt


@contextlib.contextmanager
def handled():
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` and are remembered, for the block's
    duration (a SIGTERM from ``kill`` or a CI timeout thus unwinds like Ctrl-C, and its
    ``finally`` blocks run). Outside the main thread, where Python allows no handler, it does
    nothing."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _handler) for s in SIGNALS}
    _received = None
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        _received = None
