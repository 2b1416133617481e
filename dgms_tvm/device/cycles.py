"""Estimated cycles: the code a call executed, each translation block weighed by the core's
own scheduling model.

The instruction-count plugin (``insn_plugin.c``, with ``blocks=PATH``) logs how often each
translation block ran and, once, its bytes (:mod:`.blocks`). Between two markers that
gives each block's executions. The hot blocks (the fewest that cover :data:`COVERAGE` of
the instructions) are disassembled and each is given to LLVM's machine-code analyser
(``llvm-mca``, ``-mcpu`` the profile's core) as a loop body: its steady-state cycles per
iteration are the total cycles over :data:`ITERATIONS` iterations divided by their number
(on an in-order core such as the Cortex-A53 that differs a lot from the block throughput
it reports). The estimate sums executions x cycles per iteration; the cold remainder is
charged at the hot blocks' cycles per instruction. A block ``llvm-mca`` cannot read is
reported, and charged like the cold ones. Results are cached by block bytes, core and
``llvm-mca`` version.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from functools import cache
from pathlib import Path

from ..errors import UserError
from ..targets import aarch64_mattr
from .sysroot import cache_dir

COVERAGE = 0.99
ITERATIONS = 200
OBJDUMP = "aarch64-linux-gnu-objdump"


@dataclasses.dataclass
class Hot:
    """One of the blocks charged the most cycles: what names the code behind a figure."""

    share: float  # of the estimated cycles
    cpi: float  # the block's cycles per instruction (steady state, one iteration)
    instructions: int  # in the block
    mix: str  # its commonest mnemonics, e.g. "8 fmla, 4 ldr, 1 subs"


#: Blocks named in :attr:`Estimate.top`.
TOP = 3


@dataclasses.dataclass
class Estimate:
    """Estimated cycles of the code between two markers on one core."""

    cycles: float
    instructions: int
    coverage: float  # share of the instructions in blocks weighed by the model
    hot_blocks: int
    model: str  # the llvm-mca -mcpu that weighed them
    unparsed: list[str]  # blocks llvm-mca could not read (their first instructions)
    top: list[Hot] = dataclasses.field(default_factory=list)  # where the cycles go

    @property
    def cpi(self) -> float:
        return self.cycles / self.instructions if self.instructions else 0.0

    def figures(self) -> dict:
        """What a report keeps: M cycles and the blocks that cost the most."""
        return {"mcycles": 1e-6 * self.cycles, "hot": [dataclasses.asdict(h) for h in self.top]}


#: The llvm-mca builds tried, newest first: LLVM 19 has a Neoverse-N1 model of its own
#: (LLVM 16 weighs N1 by the Cortex-A57's).
TOOLS = ("llvm-mca-19", "llvm-mca-18", "llvm-mca-17", "llvm-mca-16")
#: A scheduling model, by the prefix of its resource names in llvm-mca's report.
MODELS = {"A53Unit": "cortex-a53", "A55Unit": "cortex-a55", "A57Unit": "cortex-a57",
          "CortexA510Unit": "cortex-a510", "N1Unit": "neoverse-n1", "N2Unit": "neoverse-n2",
          "V1Unit": "neoverse-v1", "V2Unit": "neoverse-v2"}


def mca_tool() -> str:
    for name in TOOLS:
        if shutil.which(name):
            return name
    raise UserError("llvm-mca not found (Debian's llvm-19): run scripts/setup.sh")


@cache
def model_of(cpu: str) -> str:
    """The scheduling model llvm-mca weighs ``cpu`` by: ``cpu`` itself, or ``"cortex-a57
    (standing in for cortex-a72)"`` where LLVM has none of its own."""
    tool = mca_tool()
    out = subprocess.run([tool, "-mtriple=aarch64", f"-mcpu={cpu}", "-iterations=1"],
                         input="add x0, x0, x1\n", capture_output=True, text=True)
    if f"'{cpu}' is not a recognized processor" in out.stderr or cpu not in mca_cpus(tool):
        return f"generic (no model of {cpu} in {tool})"
    m = re.search(r"^\[[\d.]+\]\s+- (\w+?)Unit", out.stdout, re.M)
    model = MODELS.get(f"{m.group(1)}Unit", m.group(1)) if m else "generic"
    return cpu if model == cpu else f"{model} (standing in for {cpu})"


@cache
def _mca_version(tool: str) -> str:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"LLVM version (\S+)", out)
    return m.group(1) if m else "unknown"


@cache
def mca_cpus(tool: str) -> frozenset[str]:
    """The aarch64 cores ``tool`` has a processor entry for."""
    out = subprocess.run([tool, "-mtriple=aarch64", "-mcpu=help"], capture_output=True,
                         text=True)
    text = out.stdout + out.stderr
    section = text.split("Available CPUs for this target:", 1)[-1]
    section = section.split("Available features", 1)[0]
    return frozenset(m.group(1) for m in re.finditer(r"^\s+(\S+)\s+- ", section, re.M))


def disassemble(code: bytes) -> list[str]:
    """``code`` (aarch64) as one assembly line per instruction, branch targets and literal
    addresses replaced by ``.`` (no label: llvm-mca needs no target, only the instruction)."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(code)
        f.flush()
        out = subprocess.run([OBJDUMP, "-D", "-b", "binary", "-maarch64", f.name],
                             capture_output=True, text=True, check=True).stdout
    lines = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not re.match(r"^\s*[0-9a-f]+:$", parts[0]):
            continue
        text = "\t".join(parts[2:]).split("//")[0].strip()
        mnemonic = text.split(None, 1)[0] if text else ""
        if re.match(r"^(b|bl|b\..*|cbn?z|tbn?z|adrp?|ldr|ldrsw|prfm)$", mnemonic):
            text = re.sub(r"(,\s*|\s+)0x[0-9a-f]+$", r"\1.", text)
        lines.append(text)
    return lines


#: The cycles llvm-mca charges a call for: a branch (the callee's blocks count on their
#: own). Its default, 100, makes every block that ends in a call wait for it: a block of 3
#: instructions and a ``bl`` then takes 4.2 cycles per iteration on Neoverse-N1, not 1.
CALL_LATENCY = 1


def _flags() -> list[str]:
    # -mattr widens what it reads; the model stays the core's
    return [f"-mattr={aarch64_mattr()}", f"-iterations={ITERATIONS}",
            f"-call-latency={CALL_LATENCY}", "-summary-view", "-resource-pressure=false",
            "-instruction-info=false"]


def _cache_path(model: str, tool: str) -> Path:
    how = hashlib.sha1(" ".join(_flags()).encode()).hexdigest()[:8]
    return cache_dir() / "cycles" / f"{model}-llvm{_mca_version(tool)}-{how}.json"


def block_cycles(codes: list[bytes], model: str) -> dict[bytes, float | None]:
    """Steady-state cycles per iteration of each block on ``model`` (None: llvm-mca could
    not read it), from the cache or one llvm-mca run over the missing ones."""
    tool = mca_tool()
    path = _cache_path(model, tool)
    try:
        known = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        known = {}
    keys = {c: hashlib.sha1(c).hexdigest() for c in codes}
    missing = [c for c in dict.fromkeys(codes) if keys[c] not in known]
    if missing:
        known.update({keys[c]: v for c, v in _run_mca(missing, model, tool).items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")  # bench threads
        tmp.write_text(json.dumps(known))
        os.replace(tmp, path)
    return {c: known[keys[c]] for c in codes}


def _run_mca(codes: list[bytes], model: str, tool: str) -> dict[bytes, float | None]:
    """One llvm-mca run, a code region per block. A block it cannot read (None) is left out
    and the rest run again: found by the line of its error, or, where llvm-mca fails
    without one, by halving the set until the failing blocks stand alone."""
    bodies = {c: disassemble(c) for c in codes}
    # an encoding the disassembler does not know (".inst 0x..."): no instruction to weigh
    result: dict[bytes, float | None] = {
        c: None for c in codes if not bodies[c] or any(ln.startswith(".") for ln in bodies[c])}
    pending = [[c for c in codes if c not in result]]
    while pending:
        todo = pending.pop()
        if not todo:
            continue
        text, first_line = [], {}
        for i, c in enumerate(todo):
            text.append(f"# LLVM-MCA-BEGIN r{i}")
            first_line[i] = len(text) + 1
            text += bodies[c]
            text.append("# LLVM-MCA-END")
        proc = subprocess.run([tool, "-mtriple=aarch64", f"-mcpu={model}", *_flags()],
                              input="\n".join(text) + "\n", capture_output=True, text=True)
        bad = {int(m.group(1)) for m in re.finditer(r"<stdin>:(\d+):\d+: error", proc.stderr)}
        if bad:
            starts = sorted(first_line.items(), key=lambda kv: kv[1])
            drop = {max((i for i, s in starts if s <= line), default=0) for line in bad}
            for i in drop:
                result[todo[i]] = None
            pending.append([c for i, c in enumerate(todo) if i not in drop])
            continue
        if proc.returncode:  # no line to blame: halve
            if len(todo) == 1:
                result[todo[0]] = None
            else:
                pending += [todo[: len(todo) // 2], todo[len(todo) // 2:]]
            continue
        regions = re.findall(r"Code Region - r(\d+)\s+Iterations:\s+(\d+)\s+Instructions:\s+"
                             r"\d+\s+Total Cycles:\s+(\d+)", proc.stdout)
        for i, iters, total in regions:
            result[todo[int(i)]] = int(total) / int(iters)
        for c in todo:
            result.setdefault(c, None)
    return result


def estimate(executions: dict[bytes, float], model: str,
             coverage: float = COVERAGE) -> Estimate:
    """The estimate over blocks executed so many times: between two markers, or per call
    (the difference of two such runs, where a block may count less than nothing: the sum
    stays linear in the executions, so the difference of two estimates is the estimate of
    the difference)."""
    insns = {c: n * (len(c) // 4) for c, n in executions.items() if n}
    total, size = sum(insns.values()), sum(abs(v) for v in insns.values())
    if not size:
        return Estimate(0.0, 0, 1.0, 0, model_of(model), [])
    hot, covered = [], 0.0
    for c in sorted(insns, key=lambda c: (-abs(insns[c]), c)):
        if covered >= coverage * size:
            break
        hot.append(c)
        covered += abs(insns[c])
    per_iter = block_cycles(hot, model)
    weighed = [c for c in hot if per_iter[c] is not None]
    w_insns = sum(insns[c] for c in weighed)
    w_cycles = sum(executions[c] * per_iter[c] for c in weighed)
    cpi = w_cycles / w_insns if w_insns else 1.0
    unparsed = [disassemble(c)[0] if c else "" for c in hot if per_iter[c] is None]
    cycles = w_cycles + (total - w_insns) * cpi
    return Estimate(cycles, total, sum(abs(insns[c]) for c in weighed) / size, len(hot),
                    model_of(model), unparsed, _top(executions, per_iter, weighed, cycles))


def _top(executions, per_iter, weighed, cycles: float) -> list[Hot]:
    ranked = sorted(weighed, key=lambda c: (-abs(executions[c] * per_iter[c]), c))[:TOP]
    out = []
    for c in ranked:
        mnemonics = collections.Counter(line.split(None, 1)[0] for line in disassemble(c))
        mix = ", ".join(f"{n} {m}" for m, n in mnemonics.most_common(4))
        out.append(Hot(executions[c] * per_iter[c] / cycles if cycles else 0.0,
                       per_iter[c] / (len(c) // 4), len(c) // 4, mix))
    return out
