"""Per-layer choice by measurement: where the build's strategy and ``exact`` both have a kernel
for a conv, the layer takes the one that measured faster, and the manifest keeps both figures.

On the host (an x86 build run where it is compiled) the measure is time: each strategy's
build is lowered and scheduled as it would be compiled, and every kernel of ``main`` timed
alone on random operands (:func:`dgms_tvm.bench.host_layers.ours`: a layer's input quantize
and weight decode count with its conv). The kernels after a conv up to the next conv (a
BatchNorm, relu or add that one build runs in the conv's epilogue and the other alone) count
with it, so that both builds' rows hold the same ops. Each layer is timed in its own
strategy's build; a layer chosen ``exact`` in the middle of an int8 chain changes what its
neighbours read (their run-time quantize comes back), which no layer's time shows. So the
build with the layers' choices is kept only where the whole model, timed alternately with
the build without them, is faster (:func:`confirm`). The emulated cores' choice, by the
cycle estimate, is not built.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from . import compiler
from .errors import UserError

#: The strategy a layer may take instead of the build's.
OTHER = "exact"


def check(profile) -> None:
    """Refuse a target whose kernels cannot be timed here (one line)."""
    if not profile.is_x86:
        raise UserError(f"--choose times each layer's kernels on this host: it needs --target "
                        f"x86, not {profile.name} (the choice on emulated cores, by the "
                        f"cycle estimate, is not built)")


def layer_times(lowered, profile, repeat: int = 5, number: int = 20) -> dict[str, float]:
    """{conv layer name: ms per call of its kernels and the ops after it} in the build
    ``lowered`` (a :class:`~dgms_tvm.compiler.Lowered`) for ``profile`` (this host). Layers
    of one shape share a kernel: the k-th call of a kernel is the k-th layer (in graph
    order) the lowering gave it."""
    from .bench import host_layers

    prepared = compiler.prepare(lowered, profile)
    layers: dict[str, deque] = {}
    for r in lowered.records:
        if r.op == "conv2d" and (k := r.kernel or r.fp32_kernel):
            layers.setdefault(k, deque()).append(r.name)
    times: dict[str, float] = {}
    layer = None
    for row in host_layers.ours(prepared, profile, repeat, number):
        if row["key"] is not None:  # a conv: its row opens a segment
            calls = layers.get(row["kernels"].split(" + ")[-1])
            layer = calls.popleft() if calls else None
            if layer is not None:
                times[layer] = 0.0
        if layer is not None:
            times[layer] += row["ms"]
    return times


def by_time(lowered, exact, profile, strategy: str, repeat: int = 5, number: int = 20,
            log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """{layer: {"chosen": strategy or "exact", "ms": {strategy: t, "exact": t}}} for every
    conv layer both builds time: ``lowered`` (``strategy``'s) and ``exact`` (the faster
    wins; ``strategy`` on a tie)."""
    check(profile)
    times = {}
    for s, build in ((strategy, lowered), (OTHER, exact)):
        if log:
            log(f"timing each layer of the {s} build on this host")
        times[s] = layer_times(build, profile, repeat, number)
    out = {}
    for layer, t in times[strategy].items():
        other = times[OTHER].get(layer)
        if other is None:
            continue
        out[layer] = {"chosen": strategy if t <= other else OTHER,
                      "ms": {strategy: round(t, 5), OTHER: round(other, 5)}}
    return out


def overrides(choices: dict[str, dict], strategy: str) -> dict[str, str]:
    """The layers whose choice is not the build's strategy: ``layer_strategy`` of
    :func:`dgms_tvm.compiler.lower`."""
    return {layer: c["chosen"] for layer, c in choices.items() if c["chosen"] != strategy}


def confirm(chosen, plain, profile, x, rounds: int = 9, number: int = 20) -> dict:
    """{"as chosen": ms, "plain": ms, "kept": bool}: the whole model in the build with the
    layers' choices (``chosen``, a :class:`~dgms_tvm.compiler.Lowered`) and in the one
    without them (``plain``), timed on ``x`` in alternate rounds of ``number`` calls (the
    median round each); the choices are kept where they are faster."""
    import numpy as np
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    evals = []
    for lowered in (chosen, plain):
        exe = tvm.compile(compiler.prepare(lowered, profile), target=profile.tvm_target())
        vm = relax.VirtualMachine(exe, dev)
        evals.append(vm.time_evaluator("main", dev, number=number, repeat=1))
    arg = tvm.runtime.tensor(np.ascontiguousarray(x), dev)
    ms: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, ev in enumerate(evals):
            ms[i].append(1e3 * float(ev(arg).mean))
    a, b = (float(np.median(m)) for m in ms)
    return {"as chosen": round(a, 4), "plain": round(b, 4), "kept": a < b}
