"""Build (once, cached) the aarch64 sysroot that the emulated Cortex-A device runs in.

Nothing arm64 is installed or executed on the host while building: Debian arm64 packages are
downloaded with the machine's own apt sources and unpacked with ``dpkg -x`` (a working
aarch64 CPython 3.11), and PyPI aarch64 wheels are downloaded and unzipped into ``site/``
(TVM's runtime, numpy, ...). The TVM wheel is trimmed to its runtime. The guest Python then
runs under ``qemu-aarch64`` (user-mode emulation) through the wrapper ``bin/guest-python``.

Layout of the cache folder (``.cache/device/sysroot`` in the project, or ``$DGMS_TVM_CACHE``)::

    root/            unpacked Debian packages (usr/bin/python3.11, lib/ld-linux-aarch64...)
    root/site/       guest site-packages (tvm, tvm_ffi, numpy, ..., sitecustomize.py)
                     (its and the standard library's bytecode compiled here: the guest
                     never writes any, and compiling under emulation at every start
                     doubled a device's start)
    bin/guest-python wrapper: QEMU_LD_PREFIX, PYTHONPATH, exec qemu-aarch64 python3.11
    stamp            what was built (a rebuild happens when the recipe changes)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import UserError

#: Debian arm64 packages giving a working aarch64 Python 3.11 (bookworm).
DEBIAN_PACKAGES = (
    "libc6 libgcc-s1 libstdc++6 gcc-12-base libpython3.11-minimal libpython3.11-stdlib "
    "python3.11-minimal libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libncursesw6 "
    "libtinfo6 libreadline8 libsqlite3-0 libuuid1 libcrypt1 libdb5.3 libnsl2 libtirpc3 "
    "libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libcom-err2 "
    "libzstd1 libmd0"
).split()
#: PyPI aarch64 wheels for the guest (the device needs TVM's runtime only). Not ml_dtypes:
#: TVM and tvm_ffi import it only if present, and its extension took 10 of the 24 s a guest
#: Python took to import TVM under qemu (at every device start and restart).
WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy",
          "onnxruntime==1.32.0",  # the peer measured beside us on the same emulated core
          "typing_extensions", "psutil", "cloudpickle")
#: Parts of the TVM wheel a runtime-only device does not need (about 260 MB).
TRIM = ("tvm/lib/libtvm_compiler.so", "tvm/lib/libtvm_runtime_cuda.so", "tvm/3rdparty",
        "tvm/include", "tvm/src", "tvm_ffi/include", "tvm_ffi/src", "tvm_ffi/3rdparty")
#: The guest interpreter's version (Debian bookworm's python3.11).
GUEST_PYTHON = (3, 11)
QEMU = "qemu-aarch64"
QEMU_PACKAGE = "qemu-user"

SITECUSTOMIZE = '''\
# Written by dgms_tvm.device.sysroot. TVM's RPC server re-launches itself through
# sys.executable; without binfmt_misc the aarch64 binary cannot be exec'd directly, so point
# sys.executable at the wrapper that runs it under qemu.
import os
import sys

_wrapper = os.environ.get("DGMS_GUEST_PYTHON")
if _wrapper:
    sys.executable = _wrapper
'''


def cache_dir() -> Path:
    """Where the sysroot is cached (``$DGMS_TVM_CACHE``, default ``.cache/device``)."""
    default = Path(__file__).resolve().parents[2] / ".cache" / "device"
    return Path(os.environ.get("DGMS_TVM_CACHE", default))


def run_dir() -> Path:
    """Where the running devices' state file and logs live (``$DGMS_TVM_RUN_DIR``, default
    the cache folder). Tests use their own, so they never touch a user's devices."""
    return Path(os.environ.get("DGMS_TVM_RUN_DIR", cache_dir()))


def _recipe_hash() -> str:
    return hashlib.sha256(json.dumps([DEBIAN_PACKAGES, WHEELS, TRIM, SITECUSTOMIZE,
                                      _wrapper_text(Path("/x")), "bytecode"]
                                     ).encode()).hexdigest()[:16]


def _wrapper_text(folder: Path) -> str:
    root = folder / "root"
    return f"""#!/bin/sh
# Runs the sysroot's aarch64 Python under qemu-aarch64 (QEMU_CPU picks the emulated core).
export QEMU_LD_PREFIX="${{DGMS_QEMU_PREFIX:-{root}}}"
export PYTHONPATH="{root}/site"
export PYTHONDONTWRITEBYTECODE=1
export TVM_USE_RUNTIME_LIB=1
export DGMS_GUEST_PYTHON="{folder}/bin/guest-python"
exec {QEMU} {root}/usr/bin/python3.11 "$@"
"""


@dataclasses.dataclass(frozen=True)
class Sysroot:
    folder: Path

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def python(self) -> Path:
        """The wrapper that runs the guest Python under qemu."""
        return self.folder / "bin" / "guest-python"

    @property
    def runtime_extra(self) -> Path:
        """TVM's extra runtime library (MetaSchedule's runner needs it on the device)."""
        return self.site / "tvm" / "lib" / "libtvm_runtime_extra.so"


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{what} failed: {tail[0]}")


def _compile_bytecode(root: Path, final: Path) -> None:
    """The guest's Python files compiled to bytecode by this host's interpreter where it is
    the guest's version (the same bytecode; else the guest compiles them as it imports), named
    by their final paths (``root`` is renamed to ``final``)."""
    import compileall

    if sys.version_info[:2] != GUEST_PYTHON:
        return
    for d in (root / "usr" / "lib" / "python3.11", root / "site"):
        compileall.compile_dir(d, quiet=2, workers=0, stripdir=str(root),
                               prependdir=str(final))


def _ensure_arm64_apt() -> None:
    archs = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                           text=True).stdout.split()
    if "arm64" in archs:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    _run([*sudo, "dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture arm64")
    _run([*sudo, "apt-get", "update", "-qq"], "apt-get update (for arm64 package lists)")


def ensure_sysroot(folder: Path | None = None, log=print) -> Sysroot:
    """Build the sysroot if missing or stale; return it.

    Raises
    ------
    UserError
        When qemu-user is missing or a download fails.
    """
    if shutil.which(QEMU) is None:
        raise UserError(f"{QEMU} not found: install the Debian package {QEMU_PACKAGE} "
                        "(or run scripts/setup.sh)")
    folder = Path(folder or cache_dir() / "sysroot")
    sysroot = Sysroot(folder)
    stamp = folder / "stamp"
    want = _recipe_hash()
    if stamp.exists() and stamp.read_text().strip() == want and sysroot.python.exists():
        return sysroot
    log(f"building the aarch64 sysroot in {folder} (once; about a minute)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sysroot-", dir=folder.parent))
    try:
        _ensure_arm64_apt()
        debs = tmp / "debs"
        debs.mkdir()
        _run(["apt-get", "download", "-q", *[f"{p}:arm64" for p in DEBIAN_PACKAGES]],
             "apt-get download (arm64 packages)", cwd=debs)
        root = tmp / "root"
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}")
        wheels = tmp / "wheels"
        _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
              "--only-binary=:all:", "--no-deps", "--python-version", "3.11",
              "--implementation", "cp", "--platform", "manylinux2014_aarch64",
              "--platform", "manylinux_2_17_aarch64", "--platform", "manylinux_2_28_aarch64",
              "-d", str(wheels), *WHEELS], "pip download (aarch64 wheels)")
        site = root / "site"
        for whl in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(whl) as zf:
                zf.extractall(site)
        for rel in TRIM:
            p = site / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        _compile_bytecode(root, folder / "root")
        shutil.rmtree(debs)
        shutil.rmtree(wheels)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (folder / "bin").mkdir(exist_ok=True)
    sysroot.python.write_text(_wrapper_text(folder))
    sysroot.python.chmod(0o755)
    stamp.write_text(want + "\n")
    return sysroot
