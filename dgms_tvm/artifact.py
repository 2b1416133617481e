"""The deployable artifact: a Relax VM library plus ``manifest.json``, written atomically.

Layout of an artifact folder::

    model.so        TVM Relax VM executable (``export_library``), entry function ``main``
    manifest.json   what it was built from and for (see :func:`make_manifest`), and the
                    library's size and sha256, checked by :func:`load` before it is loaded

The folder is built in a temporary sibling and renamed into place, so a failed build leaves
nothing half-written, and an existing folder is replaced only when it is an artifact itself.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    if not isinstance(doc, dict) or doc.get("format") != ARTIFACT_FORMAT:
        raise UserError(f"{path}: not a dgms-tvm artifact manifest")
    return doc


#: What a run needs of a manifest: key -> type (a dict: the keys of the object it holds).
_TENSOR = {"name": str, "shape": list, "dtype": str}
SCHEMA = {
    "library": str, "library_bytes": int, "library_sha256": str, "entry": str,
    "inputs": [_TENSOR], "outputs": [_TENSOR],
    "target": {"name": str, "triple": str, "mattr": list},
}


def _schema_problem(value, schema, where: str) -> str | None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where} is not an object"
        for key, sub in schema.items():
            name = f"{where}.{key}" if where else key
            if key not in value:
                return f"no {name}"
            if problem := _schema_problem(value[key], sub, name):
                return problem
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} is not a list"
        return next((pr for i, v in enumerate(value)
                     if (pr := _schema_problem(v, schema[0], f"{where}[{i}]"))), None)
    if not isinstance(value, schema) or isinstance(value, bool):
        return f"{where} is not a{'n' if schema is int else ''} {schema.__name__}"
    return None


def library_fields(path: Path) -> dict:
    """The manifest's record of the library: its size and sha256."""
    data = Path(path).read_bytes()
    return {"library_bytes": len(data), "library_sha256": hashlib.sha256(data).hexdigest()}


def load(folder: Path) -> dict:
    """The manifest of an artifact about to run, once its schema and its library's size and
    sha256 are checked (a truncated library would crash the loader with SIGBUS, random bytes
    give a loader traceback).

    Raises
    ------
    UserError
        As :func:`read_manifest`, and when the manifest lacks what a run needs or the library
        is missing or is not the one the manifest records.
    """
    folder = Path(folder)
    doc = read_manifest(folder)
    rebuild = "rebuild the artifact with scripts/compile.py"
    if problem := _schema_problem(doc, SCHEMA, ""):
        raise UserError(f"{folder / MANIFEST}: damaged or too old a manifest: {problem} "
                        f"({rebuild})")
    if Path(doc["library"]).name != doc["library"]:
        raise UserError(f"{folder / MANIFEST}: library {doc['library']!r} is not a file name")
    lib = folder / doc["library"]
    if not lib.is_file():
        raise UserError(f"artifact {folder}: {doc['library']} is missing ({rebuild})")
    got = library_fields(lib)
    if got["library_bytes"] != doc["library_bytes"]:
        raise UserError(f"artifact {folder}: {doc['library']} is damaged: "
                        f"{got['library_bytes']} bytes, the manifest says "
                        f"{doc['library_bytes']} (truncated?; {rebuild})")
    if got["library_sha256"] != doc["library_sha256"]:
        raise UserError(f"artifact {folder}: {doc['library']} is damaged: its sha256 is not "
                        f"the manifest's ({rebuild})")
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
