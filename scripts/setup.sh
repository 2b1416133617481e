#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine, safe to re-run:
#   1. system packages: the aarch64 cross toolchain (g++-aarch64-linux-gnu), qemu-user and
#      llvm-19 (its llvm-mca weighs executed code by each core's scheduling model);
#   2. a virtual environment in .venv with the project and its pinned Python packages;
#   3. the aarch64 sysroot the emulated Cortex-A devices run in (Debian arm64 packages and
#      PyPI aarch64 wheels, unpacked, never installed; adds dpkg's arm64 architecture).
# Re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
command -v llvm-mca-19 >/dev/null 2>&1 || need+=(llvm-19)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# torch==2.13.0's CPU wheel is built for CPython 3.11.
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      py="$cand"; break
    fi
  done
fi
[ -n "$py" ] || { echo "setup: error: Python 3.11 is required (torch 2.13.0 CPU wheel)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=.venv/.dgms-tvm-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$want" > "$stamp"
fi
# The aarch64 sysroot of the emulated Cortex-A device (built once, cached in .cache/device).
.venv/bin/python -c 'from dgms_tvm.device.sysroot import ensure_sysroot; ensure_sysroot(log=lambda m: print("setup:", m))'
# The TCG plugin that counts the emulated device's instructions (built once, cached).
.venv/bin/python -c 'from dgms_tvm.device.insn import ensure_plugin; ensure_plugin(log=lambda m: print("setup:", m))'
echo "setup: ready ($(.venv/bin/python -c 'import tvm, torch; print("tvm", tvm.__version__, "torch", torch.__version__)'))"
