"""The deployable artifact: a Relax VM library plus ``manifest.json``, written atomically.

Layout of an artifact folder::

    model.so        TVM Relax VM executable (``export_library``), entry function ``main``
    manifest.json   what it was built from and for (see :func:`make_manifest`)

The folder is built in a temporary sibling and renamed into place, so a failed build leaves
nothing half-written, and an existing folder is replaced only when it is an artifact itself.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from .errors import UserError

MANIFEST = "manifest.json"
LIBRARY = "model.so"
ARTIFACT_FORMAT = "dgms-tvm-artifact/1"


def read_manifest(folder: Path) -> dict:
    """The manifest of an artifact folder.

    Raises
    ------
    UserError
        When the folder or its manifest is missing or not ours.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"artifact folder {folder} does not exist")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} is not a dgms-tvm artifact (no {MANIFEST})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: corrupt manifest ({err})") from None
    if doc.get("format") != ARTIFACT_FORMAT:
        raise UserError(f"{path}: not a dgms-tvm artifact manifest")
    return doc


def check_output_dir(folder: Path) -> None:
    """Refuse an output folder that exists, is not empty, and is not an artifact of ours."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        try:
            read_manifest(folder)
        except UserError:
            raise UserError(f"output folder {folder} exists and is not a dgms-tvm artifact; "
                            "choose another --output or remove it") from None


@contextlib.contextmanager
def staging(folder: Path):
    """Yield a temporary folder; on success it replaces ``folder``, on failure it is removed."""
    folder = Path(folder).resolve()
    check_output_dir(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{time.time_ns()}")
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(folder: Path, manifest: dict) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
