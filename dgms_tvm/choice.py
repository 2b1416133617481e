"""Per-layer choice by measurement: where the build's strategy and another both have a kernel
for a conv, the layer takes the one that measured cheaper, and the manifest keeps both
figures.

On the host (an x86 build run where it is compiled) the other is ``exact`` and the measure
is time: each strategy's build is lowered and scheduled as it would be compiled, and every
kernel of ``main`` timed alone on random operands (:func:`dgms_tvm.measure.host.layers`:
a layer's input quantize and weight decode count with its conv). The kernels after a conv up
to the next conv (a BatchNorm, relu or add that one build runs in the conv's epilogue and
the other alone) count with it, so that both builds' rows hold the same ops. Each layer is
timed in its own strategy's build; a layer chosen ``exact`` in the middle of an int8 chain
changes what its neighbours read (their run-time quantize comes back), which no layer's time
shows. So the build with the layers' choices is kept only where the whole model, timed
alternately with the build without them, is faster (:func:`confirm`).

On an ARM core with the lookup-table conv (cortex-a53 / a72) the other is ``int8-widening``
(the same int8 build without it) and the measure is the cycle estimate: every kernel run
alone on emulated devices of the core (:func:`dgms_tvm.measure.devices.layers`; the
counts are deterministic). Both convs read the same int8 input and write the same int8
output, so a layer's choice changes nothing around it, and no whole-model check is needed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

from . import compiler, strategies
from .errors import UserError

#: The strategy a layer may take instead of the build's, on the host.
OTHER = "exact"


def other(profile, strategy: str) -> str | None:
    """What a layer may take instead of ``strategy``'s kernel on ``profile``'s core (None:
    nothing here to choose between)."""
    if profile.is_x86:
        return OTHER if strategy != OTHER else None
    if strategy == "int8" and strategies.for_core(strategies.INT8_LUT, profile):
        return "int8-widening"
    return None


def check(profile, strategy: str = "int8") -> None:
    """Refuse a target it cannot measure, or where it has nothing to choose (one line)."""
    if profile.is_x86 or (profile.is_arm and profile.qemu_cpu and other(profile, strategy)):
        return
    raise UserError(f"--choose measures each layer's kernels either on this host (--target "
                    f"x86) or on an emulated core with the lookup-table conv (cortex-a53, "
                    f"cortex-a72) under --strategy int8 / auto: not {profile.name} with "
                    f"{strategy}")


def layer_times(lowered, profile, repeat: int = 5, number: int = 20) -> dict[str, float]:
    """{conv layer name: ms per call of its kernels and the ops after it} in the build
    ``lowered`` (a :class:`~dgms_tvm.compiler.Lowered`) for ``profile`` (this host)."""
    from .measure import host

    rows = host.layers(compiler.prepare(lowered, profile), profile, repeat, number)
    return per_layer(lowered, rows, "ms")


def per_layer(lowered, rows: list[dict], measure: str) -> dict[str, float]:
    """{conv layer name: the sum of ``measure`` over its row and the rows after it up to the
    next conv's}, ``rows`` being each layer of ``main`` in order (the bench's rows). Layers of
    one shape share a kernel: the k-th call of a kernel is the k-th layer (in graph order)
    the lowering gave it."""
    layers: dict[str, deque] = {}
    for r in lowered.records:
        if r.op == "conv2d" and (k := r.kernel or r.fp32_kernel):
            layers.setdefault(k, deque()).append(r.name)
    out: dict[str, float] = {}
    layer = None
    for row in rows:
        if row["key"] is not None:  # a conv: its row opens a segment
            calls = layers.get(row["kernels"].split(" + ")[-1])
            layer = calls.popleft() if calls else None
            if layer is not None:
                out[layer] = 0.0
        if layer is not None:
            out[layer] += row[measure]
    return out


def by_time(lowered, exact, profile, strategy: str, repeat: int = 5, number: int = 20,
            log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """{layer: {"chosen": strategy or "exact", "ms": {strategy: t, "exact": t}}} for every
    conv layer both builds time: ``lowered`` (``strategy``'s) and ``exact`` (the faster
    wins; ``strategy`` on a tie)."""
    check(profile, strategy)
    times = {}
    for s, build in ((strategy, lowered), (OTHER, exact)):
        if log:
            log(f"timing each layer of the {s} build on this host")
        times[s] = layer_times(build, profile, repeat, number)
    out = {}
    for layer, t in times[strategy].items():
        t2 = times[OTHER].get(layer)
        if t2 is None:
            continue
        out[layer] = {"chosen": strategy if t <= t2 else OTHER,
                      "ms": {strategy: round(t, 5), OTHER: round(t2, 5)}}
    return out


def same_kernels(a, b) -> set[str]:
    """The layers whose kernel is the same in the builds ``a`` and ``b``."""
    kernels = {r.name: r.kernel for r in b.records}
    return {r.name for r in a.records if r.kernel == kernels.get(r.name)}


def by_cycles(lowered, alt, profile, strategy: str, tracker, key: str, workdir: Path,
              workers: int = 1, log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """{layer: {"chosen": ..., "mcycles": {strategy: c, other: c}, "minstr": {...}}} for every
    conv layer of ``lowered`` (``strategy``'s build) and ``alt`` (the ``other`` one), each
    kernel run alone on the emulated devices under ``key``: the fewer estimated cycles win
    (``strategy`` on a tie, and where both builds run the same conv kernel)."""
    from .measure import devices

    alt_name = other(profile, strategy)
    figures = {}
    for s, build in ((strategy, lowered), (alt_name, alt)):
        if log:
            log(f"counting each layer of the {s} build on the emulated {profile.name}")
        rows = devices.layers(compiler.prepare(build, profile), profile, tracker, key,
                              workdir / s, workers)
        figures[s] = {m: per_layer(build, rows, m) for m in ("mcycles", "minstr")}
    # a layer whose conv is the same kernel in both builds keeps the strategy's: the
    # estimates of one code placed in two libraries differ by a few percent
    same = same_kernels(lowered, alt)
    out = {}
    for layer, c in figures[strategy]["mcycles"].items():
        d = figures[alt_name]["mcycles"].get(layer)
        if d is None:
            continue
        out[layer] = {"chosen": strategy if c <= d or layer in same else alt_name,
                      **{m: {s: round(figures[s][m][layer], 4) for s in (strategy, alt_name)}
                         for m in ("mcycles", "minstr")}}
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


#: Emulated devices ``--choose`` starts for an ARM target (where none runs already).
DEVICES = 2


def choose(loaded, lowered, profile, strategy: str, bits, cal, log) -> tuple:
    """(the build to compile, the manifest's ``choices``): ``lowered`` (``strategy``'s
    build of ``loaded``) with each conv's measured choice, on the host by time or on the
    emulated core by the cycle estimate (see the module's text). On an ARM core where no
    conv has another kernel in the other build (a 4-bit model), nothing is measured and the
    choices are None."""
    import tempfile

    alt_name = other(profile, strategy)
    alt = compiler.lower(loaded.imported, bits, strategy=alt_name, profile=profile,
                         calibration=cal)
    if profile.is_x86:
        choices = by_time(lowered, alt, profile, strategy, log=log)
        out = {"measure": "ms per call on this host, the layer's kernels alone (median)",
               "layers": choices}
        if picked := overrides(choices, strategy):
            log(f"timing the model with {len(picked)} layer(s) {alt_name} against without")
            chosen = compiler.lower(loaded.imported, bits, strategy=strategy, profile=profile,
                                    calibration=cal, layer_strategy=picked)
            out["model_ms"] = confirm(chosen, lowered, profile, loaded.example())
            lowered = chosen if out["model_ms"]["kept"] else lowered
        return lowered, out
    from .device import manager

    if len(same_kernels(lowered, alt)) == len(lowered.records):
        log(f"no conv has another kernel in the {alt_name} build: nothing to measure")
        return lowered, None
    with tempfile.TemporaryDirectory() as tmp, manager.local_devices(
            profile.name, DEVICES, log=log) as (tracker, _):
        choices = by_cycles(lowered, alt, profile, strategy, tracker, profile.name, Path(tmp),
                            DEVICES, log)
    if picked := overrides(choices, strategy):
        lowered = compiler.lower(loaded.imported, bits, strategy=strategy, profile=profile,
                                 calibration=cal, layer_strategy=picked)
    return lowered, {"measure": f"M estimated cycles per call on the emulated {profile.name},"
                                " the layer's kernels alone", "layers": choices}
