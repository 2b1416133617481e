"""Helpers shared by the thin CLIs in ``scripts/``."""

from __future__ import annotations

import functools
import sys
import traceback

from . import interrupt
from .errors import UserError


def _drop_stdout() -> None:
    """Point stdout at /dev/null: its unwritten buffer would raise again at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def one_line_errors(main):
    """Run ``main``; a :class:`UserError` becomes ``error: ...`` on stderr and exit code 2,
    an interrupt ``interrupted`` and exit code 130. Any other exception is a bug: its
    traceback, then ``internal error: ...`` with its message's first line, exit code 1 (TVM's
    own exception hook would print only a note for some of its errors, a TVMScript one among
    them, and lose the message) - unless a signal came while TVM ran, which TVM turns into
    such an exception (see :mod:`.interrupt`). A closed stdout (``| head``) ends it quietly
    with code 141, as a process killed by SIGPIPE."""

    @functools.wraps(main)
    def wrapper(argv=None):
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
            if interrupt.received() is not None:
                print("interrupted", file=sys.stderr)
                return 130
            traceback.print_exception(err, file=sys.stderr)
            first = (str(err).strip().splitlines() or [""])[0]
            print(f"internal error (a dgms-tvm bug; please report it with the traceback "
                  f"above): {type(err).__name__}: {first}", file=sys.stderr)
            return 1

    return wrapper


def run_script(main) -> int:
    """A script's ``if __name__ == "__main__"``: ``main`` (wrapped by :func:`one_line_errors`)
    with Ctrl-C and SIGTERM handled as in :func:`.interrupt.handled`, so that either ends it
    with ``interrupted`` and exit code 130 whatever it was doing, its ``finally`` blocks run
    (they stop the emulated devices it started). Only here are signal handlers installed:
    tests call ``main`` itself."""
    try:
        with interrupt.handled():
            return main()
    except KeyboardInterrupt:  # a signal in the instant after main returned
        print("interrupted", file=sys.stderr)
        return 130


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
