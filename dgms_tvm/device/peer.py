"""The peer row: onnxruntime (its aarch64 wheel, MLAS kernels) on the same emulated core.

onnxruntime runs in its own guest process (it is no TVM module), under the same QEMU_CPU
and the same instruction-count plugin, with markers around its runs inside that process.
qemu-user passes the host's /proc/cpuinfo (an x86 description) through, on which
onnxruntime's CPU detection crashes; QEMU looks guest paths up under QEMU_LD_PREFIX first,
so a prefix folder linking the sysroot and holding a ``proc/cpuinfo`` for the emulated core
fixes it (dotprod itself is detected from the hardware-capability bits QEMU_CPU sets).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .blocks import BlockLog, per_call
from .cycles import estimate
from .insn import MARKER_BASE, ensure_plugin
from .sysroot import ensure_sysroot

#: ARM's CPU part numbers (MIDR) of the emulated cores.
_PART = {"cortex-a53": "0xd03", "cortex-a55": "0xd05", "cortex-a72": "0xd08",
         "cortex-a76": "0xd0b", "neoverse-n1": "0xd0c", "neoverse-n2": "0xd49"}
_V80 = "fp asimd evtstrm crc32 cpuid"
_V82 = _V80 + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
_V9 = _V82 + " sve sve2 i8mm bf16 svei8mm svebf16"

GUEST_SCRIPT = r'''
import json, os, sys, time
import numpy as np
import onnxruntime as ort

model, xpath, n1, n2, repeat, t1, t2, t3, t4 = sys.argv[1:10]
n1, n2, repeat = int(n1), int(n2), int(repeat)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
opts.log_severity_level = 3
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
feed = {sess.get_inputs()[0].name: np.load(xpath)}
out = sess.run(None, feed)[0]


def mark(token):
    try:
        os.close(MARKER_BASE + int(token))
    except OSError:
        pass


def runs(n):
    for _ in range(n):
        sess.run(None, feed)


mark(t1); runs(n1); mark(t2)
mark(t3); runs(n2); mark(t4)
ms = []
for _ in range(repeat):
    t = time.perf_counter()
    sess.run(None, feed)
    ms.append(1e3 * (time.perf_counter() - t))
np.save(xpath + ".out.npy", out)
print(json.dumps({"ms": ms}))
'''.replace("MARKER_BASE", str(MARKER_BASE))


def cpu_prefix(profile, folder: Path) -> Path:
    """A QEMU_LD_PREFIX folder: the sysroot plus a /proc/cpuinfo describing ``profile``."""
    sysroot = ensure_sysroot()
    prefix = folder / f"prefix-{profile.name}"
    (prefix / "proc").mkdir(parents=True, exist_ok=True)
    for d in ("etc", "lib", "usr"):
        link = prefix / d
        if not link.is_symlink():
            link.symlink_to(sysroot.root / d)
    features = _V9 if profile.i8mm else _V82 if profile.dotprod else _V80
    text = "".join(f"processor\t: {i}\nBogoMIPS\t: 100.00\nFeatures\t: {features}\n"
                   f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                   f"CPU part\t: {_PART.get(profile.name, '0xd08')}\nCPU revision\t: 0\n\n"
                   for i in range(profile.num_cores))
    (prefix / "proc" / "cpuinfo").write_text(text)
    return prefix


def run_onnxruntime(onnx_model: bytes, x: np.ndarray, profile, repeat: int = 3,
                    n1: int = 1, n2: int = 3, workdir: Path | None = None) -> dict:
    """Time and count one onnxruntime model on the emulated ``profile`` core.

    Returns
    -------
    dict
        ``{"ms": [...], "minstr": per-inference M instructions, "mcycles": M estimated
        cycles (:mod:`.cycles`), "output": ndarray}``.
    """
    sysroot = ensure_sysroot()
    plugin = ensure_plugin()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        (tmp / "model.onnx").write_bytes(onnx_model)
        np.save(tmp / "x.npy", np.ascontiguousarray(x))
        (tmp / "peer.py").write_text(GUEST_SCRIPT)
        counts, blocks = tmp / "insn.txt", tmp / "insn.blocks"
        env = dict(os.environ, QEMU_CPU=profile.qemu_cpu,
                   DGMS_QEMU_PREFIX=str(cpu_prefix(profile, tmp)),
                   QEMU_PLUGIN=f"{plugin},out={counts},blocks={blocks}")
        env.pop("QEMU_LD_PREFIX", None)
        tokens = ["1", "2", "3", "4"]
        proc = subprocess.run(
            [str(sysroot.python), str(tmp / "peer.py"), str(tmp / "model.onnx"),
             str(tmp / "x.npy"), str(n1), str(n2), str(repeat), *tokens],
            env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"onnxruntime on the emulated {profile.name} failed: {tail}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        c = {}
        for line in counts.read_text().splitlines():
            tok, _, n = line.partition(" ")
            c.setdefault(tok, int(n))
        instr = ((c["4"] - c["3"]) - (c["2"] - c["1"])) / (n2 - n1)
        log = BlockLog.read(blocks)
        ex = per_call(log.between(1, 2), log.between(3, 4), n2 - n1)
        return {"ms": res["ms"], "minstr": instr * 1e-6, **estimate(ex, profile.mcpu).figures(),
                "output": np.load(tmp / "x.npy.out.npy")}
