"""Where the CLIs write: checked before the work starts, written atomically at its end.

Without the check, a read-only mount or a full disk shows only after the whole build or
training, as a traceback or as a linker message that buries "No space left on device".
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def _nearest_existing(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path


def _free_mib(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(_nearest_existing(path)).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def no_space(err: BaseException) -> bool:
    """Whether ``err`` is a full disk: an ``ENOSPC`` OSError, or a tool's message saying so
    (the linker's, which TVM raises as a RuntimeError)."""
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) \
        or "No space left on device" in str(err)


def describe(err: BaseException, path: Path, what: str = "output") -> str:
    """One line for an error met writing ``what`` at ``path``."""
    if no_space(err):
        tmp = tempfile.gettempdir()
        return (f"no space left on device writing {what} {path} ({_free_mib(path)} there; "
                f"{_free_mib(Path(tmp))} in {tmp}, where TVM's compiler writes too)")
    code = getattr(err, "errno", None)
    if code == errno.EROFS:
        return f"cannot write {what} {path}: read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {what} {path}: permission denied"
    reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
    return f"cannot write {what} {path}: {reason}"


def check_writable(path: Path, what: str = "output") -> None:
    """Raise a :class:`UserError` unless a file can be written beside ``path`` (in its
    folder, or in the nearest existing folder above, where the missing ones will be made).

    A 4 KiB probe file is written and removed: on a full disk it fails as the real output
    would, before the work rather than after.
    """
    base = _nearest_existing(Path(path).resolve().parent)
    if not base.is_dir():
        raise UserError(f"cannot write {what} {path}: {base} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".dgms-tvm-probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
    except OSError as err:
        raise UserError(describe(err, path, what)) from None


def write_atomic(path: Path, write: Callable[[Path], None], what: str = "output") -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``: an
    error or an interrupt leaves no half-written file. OSErrors and full disks (whatever
    ``write``'s library raises for one) become one-line UserErrors."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except Exception as err:
        if isinstance(err, OSError) or no_space(err):
            raise UserError(describe(err, path, what)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
