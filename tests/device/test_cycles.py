"""The cycle estimate (``device/cycles.py``): hand-written aarch64 loops whose bounds follow
from the core's documented rates, run under qemu-user with the counting plugin; the estimate
repeats; a block llvm-mca cannot read is reported."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from dgms_tvm.device import cycles, insn
from dgms_tvm.device.blocks import BlockLog

N = 20000  # loop iterations between the markers
MARK = insn.MARKER_BASE


def _loop(tmp_path, body: str, cpu: str = "neoverse-n1") -> dict[bytes, int]:
    """Executions of each block between two markers around ``N`` iterations of ``body``
    (aarch64 assembly, ``;``-separated), run on qemu's ``cpu`` under the plugin."""
    src = tmp_path / "loop.c"
    asm = body.replace(";", "\\n")
    src.write_text(f"""
#include <unistd.h>
int main(void) {{
    long n = {N};
    close({MARK} + 1);
    __asm__ volatile("1:\\n{asm}\\nsubs %0, %0, #1\\nb.ne 1b\\n"
                     : "+r"(n) :: "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "cc");
    close({MARK} + 2);
    return 0;
}}
""")
    exe = tmp_path / "loop"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-static", "-o", str(exe), str(src)],
                   check=True)
    out, blocks = tmp_path / "insn.txt", tmp_path / "blocks.txt"
    for f in (out, blocks):  # the plugin appends
        f.unlink(missing_ok=True)
    subprocess.run(["qemu-aarch64", "-cpu", cpu, "-plugin",
                    f"{insn.ensure_plugin()},out={out},blocks={blocks}", str(exe)], check=True)
    counts = dict(line.split() for line in out.read_text().splitlines())
    ex = BlockLog.read(blocks).between(1, 2)
    # the blocks' instructions are the plugin's count between the same markers
    assert sum(n * len(c) // 4 for c, n in ex.items()) == int(counts["2"]) - int(counts["1"])
    return ex


INDEPENDENT = ";".join(f"fmla v{i}.4s, v8.4s, v9.4s" for i in range(8))
DEPENDENT = ";".join("fmla v0.4s, v8.4s, v9.4s" for _ in range(8))


def test_independent_fmla_reach_the_throughput_bound(tmp_path):
    """Neoverse-N1 issues 2 ASIMD multiply-adds per cycle (its two FP/ASIMD pipes): 8
    independent ``fmla`` per iteration take 4 cycles."""
    e = cycles.estimate(_loop(tmp_path, INDEPENDENT), "neoverse-n1")
    assert e.model == "neoverse-n1" and e.coverage >= 0.99 and not e.unparsed
    assert e.cycles / N == pytest.approx(4.0, rel=0.1)


def test_the_estimate_names_the_block_the_cycles_go_to(tmp_path):
    """The loop's body is the block charged (nearly) all the cycles, named by its mnemonics:
    8 fmla, a subs and a b.ne in 10 instructions at 0.4 cycles each."""
    e = cycles.estimate(_loop(tmp_path, INDEPENDENT), "neoverse-n1")
    loop = e.top[0]
    assert loop.share > 0.99 and loop.instructions == 10
    assert loop.mix.split(", ")[0] == "8 fmla" and {"1 subs", "1 b.ne"} <= set(
        loop.mix.split(", "))
    assert loop.cpi == pytest.approx(0.4, rel=0.1)
    assert sum(h.share for h in e.top) <= 1 + 1e-9 and len(e.top) <= cycles.TOP
    assert e.figures() == {"mcycles": pytest.approx(e.cycles * 1e-6),
                           "hot": [dataclasses.asdict(h) for h in e.top]}


def test_a_dependent_chain_gets_its_latency_bound(tmp_path):
    """Each ``fmla`` waits for the one before (latency 4 on Neoverse-N1): 8 take 32 cycles."""
    e = cycles.estimate(_loop(tmp_path, DEPENDENT), "neoverse-n1")
    assert e.cycles / N == pytest.approx(32.0, rel=0.1)


def test_in_order_a53_and_a72_differ_from_n1(tmp_path):
    """The same loop on other cores' models: slower on the in-order A53; the A72, which LLVM
    has no model of, is weighed by the Cortex-A57's and says so."""
    ex = _loop(tmp_path, INDEPENDENT, cpu="cortex-a72")
    n1, a72, a53 = (cycles.estimate(ex, c) for c in ("neoverse-n1", "cortex-a72",
                                                     "cortex-a53"))
    assert a72.model == "cortex-a57 (standing in for cortex-a72)"
    assert a53.model == "cortex-a53" and a53.cycles > 1.5 * n1.cycles


def test_the_estimate_repeats_across_runs_and_processes(tmp_path):
    first = cycles.estimate(_loop(tmp_path, INDEPENDENT + ";" + DEPENDENT), "cortex-a53")
    again = cycles.estimate(_loop(tmp_path, INDEPENDENT + ";" + DEPENDENT), "cortex-a53")
    assert again.cycles == pytest.approx(first.cycles, rel=1e-3)
    code = ("import json, sys; from dgms_tvm.device import cycles; "
            "from dgms_tvm.device.blocks import BlockLog; "
            "ex = BlockLog.read(sys.argv[1]).between(1, 2); "
            "print(json.dumps(cycles.estimate(ex, 'cortex-a53').cycles))")
    # another process with an empty cache: llvm-mca runs again
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "blocks.txt")],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "DGMS_TVM_CACHE": str(tmp_path / "cache")}).stdout
    assert json.loads(out) == pytest.approx(first.cycles, rel=1e-3)


def test_a_block_llvm_mca_cannot_read_is_reported_and_charged(tmp_path):
    """A block of undefined encodings, and one with an atomic that the Neoverse-N1 model
    has no scheduling class for (llvm-mca fails without naming a line), are named in
    ``unparsed`` and charged at the weighed blocks' cycles per instruction; the coverage
    says how much was weighed."""
    ex = _loop(tmp_path, INDEPENDENT)
    good = cycles.estimate(ex, "neoverse-n1")
    undefined = b"\xff\xff\xff\xff" * 10
    atomic = bytes.fromhex("200060f8") + bytes.fromhex("00cd294e") * 9  # ldaddl, 9 fmla
    e = cycles.estimate({**ex, undefined: N, atomic: N}, "neoverse-n1")
    assert sorted(u.split()[0] for u in e.unparsed) == [".inst", "ldaddl"]
    assert e.instructions == good.instructions + 20 * N
    assert e.coverage == pytest.approx(good.instructions * good.coverage / e.instructions)
    assert e.cycles == pytest.approx(good.cycles + 20 * N * good.cpi, rel=1e-6)


def test_a_block_ending_in_a_call_is_not_charged_the_callee():
    """``add; ldr; mov; bl``: 4 instructions, about one cycle per iteration on Neoverse-N1
    (llvm-mca's default call latency, 100 cycles, would make it 4)."""
    code = bytes.fromhex("21040091e20740f9e00302aa00000094")
    assert cycles.disassemble(code)[-1].startswith("bl")
    assert cycles.block_cycles([code], "neoverse-n1")[code] < 1.5
