"""Helpers shared by the thin CLIs in ``scripts/``."""

from __future__ import annotations

import functools
import signal
import sys
import threading
import traceback

from .errors import UserError


def _terminated(*_):
    raise KeyboardInterrupt


def _drop_stdout() -> None:
    """Point stdout at /dev/null: its unwritten buffer would raise again at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def one_line_errors(main):
    """Run ``main``; a :class:`UserError` becomes ``error: ...`` on stderr and exit code 2.
    Any other exception is a bug: its traceback, then ``internal error: ...`` with its
    message's first line, exit code 1 (TVM's own exception hook would print only a note for
    some of its errors, a TVMScript one among them, and lose the message). SIGTERM (``kill``,
    a CI timeout) ends it as Ctrl-C does, so that its ``finally`` blocks run: the emulated
    devices a run started are stopped, not left behind. A closed stdout (``| head``) ends it
    quietly with code 141, as a process killed by SIGPIPE."""

    @functools.wraps(main)
    def wrapper(argv=None):
        main_thread = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
        try:
            code = main(argv) or 0
            sys.stdout.flush()  # (here, where a closed pipe is caught, not at exit)
            return code
        except BrokenPipeError:  # the reader went away (``| head``): quiet, as Unix tools
            _drop_stdout()
            return 141
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # a bug: reported, not hidden
            traceback.print_exception(err, file=sys.stderr)
            first = (str(err).strip().splitlines() or [""])[0]
            print(f"internal error (a dgms-tvm bug; please report it with the traceback "
                  f"above): {type(err).__name__}: {first}", file=sys.stderr)
            return 1
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, before)

    return wrapper


def logs_root(text: str | None):
    """``--tuning-logs``: a folder (relative ones from the project root when they do not
    exist here), or ``none``."""
    from pathlib import Path

    if text is None or text.lower() == "none":
        return None
    path = Path(text)
    if not path.exists() and not path.is_absolute():
        root = Path(__file__).resolve().parent.parent / path
        if root.exists():
            return root
    return path


def shape_nxk(text: str) -> tuple[int, int]:
    """An argparse type: ``NxK`` (``4096x4096``) as ``(N, K)``."""
    import argparse

    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not NxK (e.g. 4096x4096)") \
            from None
    return n, k
