"""Batch-1 codebook dense layers on this host against the best FP32 GEMV, side by side in one
run (``scripts/bench_gemv.py``).

Per shape ``[N, K]`` (``Y = W @ x``), every row computes the same product from the same
weights and is checked against its oracle before it is timed:

- FP32: numpy's BLAS (``W @ x``), our hand-written TVM GEMV (:mod:`.kernels.gemv`, arith
  ``fp32``) and, with ``trials > 0``, TVM's generic GEMV tuned with MetaSchedule here;
- DGMS ``bits``-bit: the exact kernel (``vpermps`` lookup, FP32 FMA) and the int8 kernel
  (``vpshufb`` lookup, VNNI ``vpdpbusd``) where the host has AVX-512, the int8 kernel's AVX2
  form and the lut kernel (AVX2 ``vpermps``) where it has AVX2.

:func:`device_counts` (``scripts/bench_gemv_arm.py``) counts the aarch64 instructions of the
codebook dense kernels on an emulated Cortex-A instead.

Two timings per row. *warm*: the same call repeated (``time_evaluator``), so weights that fit
in the last-level cache are read from it (a 4096x4096 layer at 4 bits is 8 MiB). *cold*:
calls rotate over enough copies of the weights to fill 4x the last-level cache, so every
call streams its weights from memory, as a layer does in a whole network; it includes the
Python call (microseconds), which only penalises the fastest rows. Rounds interleave the
rows (with a pause between rows: BLAS and TVM thread pools spin after a call, and would steal
the next row's cores), and each figure is the median over rounds, so a busy moment on the
machine hits every row alike. The machine's read bandwidth (a parallel vector sum over 1 GiB,
all cores) is measured in the same run, to put each row's weight bandwidth beside it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tvm
from tvm.script import tirx as T

from ..errors import UserError
from ..kernels import gemv as kg
from ..kernels.common import standalone
from ..targets import get_profile

LLC_BYTES = 32 << 20  # fallback when sysfs does not say


def llc_bytes() -> int:
    """Size of the last-level cache (sysfs), or 32 MiB."""
    best = 0
    for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = p.read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
        best = max(best, int(text.rstrip("KM")) * mult)
    return best or LLC_BYTES


def _read_kernel(blocks: int, length: int):
    @T.prim_func
    def read(A: T.Buffer((blocks, length), "float32"), Y: T.Buffer((blocks,), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for b in T.parallel(blocks):
            acc = T.alloc_buffer((64,), "float32", scope="local")
            acc[T.Ramp(0, 1, 64)] = T.Broadcast(T.float32(0), 64)
            for c in range(length // 64):
                acc[T.Ramp(0, 1, 64)] = acc[T.Ramp(0, 1, 64)] + A[b, T.Ramp(c * 64, 1, 64)]
            Y[b] = T.float32(0)
            for j in range(64):
                Y[b] = Y[b] + acc[j]
    return read


def read_bandwidth(target, nbytes: int = 1 << 30, repeat: int = 5) -> float:
    """GB/s of a parallel, vectorised sum over ``nbytes`` of float32 (every core), best of
    ``repeat`` passes (as STREAM reports: the machine's capability, not its worst moment)."""
    blocks = 256
    length = nbytes // 4 // blocks
    lib = tvm.compile(standalone(_read_kernel(blocks, length)), target=target)
    a = tvm.runtime.tensor(np.ones((blocks, length), np.float32))
    y = tvm.runtime.tensor(np.zeros(blocks, np.float32))
    lib["main"](a, y)
    if not np.allclose(y.numpy(), length):
        raise RuntimeError("bandwidth kernel computed a wrong sum")
    res = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat)(a, y)
    return blocks * length * 4 / float(min(res.results)) / 1e9


@dataclasses.dataclass
class Row:
    label: str
    weight_bytes: int
    calls: list  # one argument list per weight copy; [0] is the checked one
    fn: object  # callable(*args)
    evaluator: object = None  # time_evaluator-style callable(*args) -> results, or None
    oracle: object = None  # the expected output when it is not the FP32 product
    warm: list = dataclasses.field(default_factory=list)
    cold: list = dataclasses.field(default_factory=list)
    err: float = 0.0
    err_vs_fp32: float = 0.0


def _tvm_row(label, func, args, weight_args, target, copies, weight_bytes):
    lib = tvm.compile(standalone(func), target=target)
    tensors = [tvm.runtime.tensor(a) for a in args]
    calls = [tensors]
    for _ in range(copies - 1):  # fresh weight copies; the other operands are shared
        calls.append([tvm.runtime.tensor(a.copy()) if i in weight_args else t
                      for i, (a, t) in enumerate(zip(args, tensors))])
    row = Row(label, weight_bytes, calls, lib["main"])
    row.evaluator = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=1)
    return row


def _tuned_fp32(n, k, target, trials, log):
    """TVM's generic GEMV (te) tuned here with MetaSchedule (XGBoost); None if no record."""
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from ..schedules import tuning_db
    from ..tune import tuner

    x = te.placeholder((1, k), "float32", "X")
    w = te.placeholder((n, k), "float32", "W")
    r = te.reduce_axis((0, k), "r")
    y = te.compute((1, n), lambda m, j: te.sum(x[m, r] * w[j, r], axis=r), name="gemv")
    func = te.create_prim_func([x, w, y])
    task = tuner.Task(f"fp32_gemv_n{n}_k{k}", func, 1, 2.0 * n * k, [], None)
    profile = get_profile("x86")
    measure = tuner.make_measure(profile, "time")
    with tempfile.TemporaryDirectory(prefix="dgms-gemv-tune-") as tmp:
        work = Path(tmp)
        db = tuning_db.open_database(work / "db", create=True)
        t0 = time.perf_counter()
        tuner.tune_task(db, task, trials, target, {}, measure, work / "ms", per_iter=16)
        log(f"  tuned TVM FP32 GEMV {n}x{k}: {trials} trials in "
            f"{time.perf_counter() - t0:.0f} s")
        with target:
            sch = ms.tir_integration.compile_tir(db, task.workload(), target)
    return None if sch is None else sch.mod["main"]


def run_shape(n: int, k: int, bits: int, target, rounds: int, trials: int, log,
              seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    # A DGMS-like layer: codebook entry 0 exactly zero, the rest Gaussian mixture means.
    cb = np.concatenate([[0.0], np.sort(rng.normal(0, 0.05, (1 << bits) - 1))]).astype(
        np.float32)
    idx = rng.integers(0, 1 << bits, (n, k))
    scale = rng.uniform(0.5, 2.0, n).astype(np.float32)
    w = (cb[idx] * scale[:, None]).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    ref = (w.astype(np.float64) @ x[0].astype(np.float64)).astype(np.float32)[None]
    llc = llc_bytes()

    def copies(nbytes):
        return max(2, -(-4 * llc // nbytes))

    rows: list[Row] = []
    fp32_bytes = n * k * 4
    wc = [w] + [w.copy() for _ in range(copies(fp32_bytes) - 1)]
    rows.append(Row("numpy FP32 (BLAS)", fp32_bytes, [[m, x[0]] for m in wc],
                    lambda m, xv: m @ xv))
    y0 = np.zeros((1, n), np.float32)
    spec = kg.GemvSpec(1, n, k, 32, arith="fp32", rows=kg.rows_for(n, "fp32"))
    rows.append(_tvm_row("TVM FP32 (hand GEMV)", kg.compute(spec).with_attr(
        "global_symbol", "main"), [x, w, y0], {1}, target, copies(fp32_bytes), fp32_bytes))
    if trials > 0:
        tuned = _tuned_fp32(n, k, target, trials, log)
        if tuned is not None:
            rows.append(_tvm_row(f"TVM FP32 (tuned, {trials} trials)", tuned, [x, w, y0], {1},
                                 target, copies(fp32_bytes), fp32_bytes))
    for arith, form in (("exact", ""), ("int8", ""), ("int8", "avx2"), ("lut", "")):
        spec = kg.GemvSpec(1, n, k, bits, arith=arith, rows=kg.rows_for(n, arith), form=form)
        label = f"DGMS {bits}-bit {arith}" + (f" ({form})" if form else "")
        why = kg.supports(spec, get_profile("x86"))
        if why:
            log(f"  {label}: skipped ({why})")
            continue
        args = [x, *kg.operands(spec, idx, cb, scale), y0]
        nbytes = int(np.prod(spec.packed_shape))
        rows.append(_tvm_row(label, kg.compute(spec).with_attr(
            "global_symbol", "main"), args, {1}, target, copies(nbytes), nbytes))
        rows[-1].oracle = kg.reference(spec, x, idx, cb, scale)

    # Check every row (on its first and last weight copy) before timing anything.
    for row in rows:
        want = ref if row.oracle is None else row.oracle
        for args in (row.calls[0], row.calls[-1]):
            out = row.fn(*args)
            got = np.asarray(out if out is not None else args[-1].numpy()).reshape(ref.shape)
            err = float(np.abs(got - want).max() / np.abs(want).max())
            if err > 1e-5:
                raise RuntimeError(f"{row.label}: relative error {err:.1e} against its oracle")
            row.err = max(row.err, err)
            row.err_vs_fp32 = float(np.abs(got - ref).max() / np.abs(ref).max())

    for _ in range(rounds):
        for row in rows:
            # numpy's OpenBLAS and TVM's thread pool each spin their threads for a while after
            # a call; on a machine with few cores the next row would share them with the
            # spinning pool. Let it park, then warm this row's own pool.
            time.sleep(0.2)
            row.fn(*row.calls[0])
            n_warm = 10
            if row.evaluator is not None:
                row.warm.append(float(np.median(
                    [row.evaluator(*row.calls[0]).results[0] for _ in range(n_warm)])))
            else:
                t0 = time.perf_counter()
                for _ in range(n_warm):
                    row.fn(*row.calls[0])
                row.warm.append((time.perf_counter() - t0) / n_warm)
            t0 = time.perf_counter()
            for args in row.calls:
                row.fn(*args)
            row.cold.append((time.perf_counter() - t0) / len(row.calls))

    out = {"n": n, "k": k, "bits": bits, "llc_bytes": llc, "rows": []}
    for row in rows:
        warm, cold = float(np.median(row.warm)), float(np.median(row.cold))
        out["rows"].append({
            "label": row.label, "weight_bytes": row.weight_bytes,
            "warm_ms": 1e3 * warm, "cold_ms": 1e3 * cold,
            "warm_range_ms": [1e3 * min(row.warm), 1e3 * max(row.warm)],
            "cold_range_ms": [1e3 * min(row.cold), 1e3 * max(row.cold)],
            "cold_gbps": row.weight_bytes / cold / 1e9,
            "copies": len(row.calls), "rel_err_vs_oracle": row.err,
            "rel_err_vs_fp32": row.err_vs_fp32})
    return out


def run(shapes, bits: int = 4, rounds: int = 7, trials: int = 0, log=None,
        bandwidth_bytes: int = 1 << 30) -> dict:
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    profile = get_profile("x86")
    target = profile.tvm_target()
    if kg.supports(kg.GemvSpec(1, 16, 32, 4, arith="exact", rows=4), profile):
        log(f"note: {profile.description} lacks AVX-512; the DGMS exact and int8 rows are "
            "skipped (the lut row needs AVX2 only)")
    log(f"measuring read bandwidth ({bandwidth_bytes / 2**30:.2f} GiB, "
        f"{os.environ.get('TVM_NUM_THREADS')} threads)")
    bw = read_bandwidth(target, bandwidth_bytes)
    res = {"machine": profile.description, "threads": os.environ.get("TVM_NUM_THREADS"),
           "read_gbps": bw, "shapes": []}
    for n, k in shapes:
        log(f"[{n}x{k}] building and checking")
        res["shapes"].append(run_shape(n, k, bits, target, rounds, trials, log))
    return res


def format_report(res: dict) -> str:
    lines = [f"# Batch-1 {res['shapes'][0]['bits']}-bit codebook dense vs FP32 GEMV on "
             f"{res['machine']} ({res['threads']} threads)",
             "",
             f"- machine read bandwidth: **{res['read_gbps']:.1f} GB/s** (parallel vector sum "
             "over 1 GiB, best of 5, same run)"]
    for s in res["shapes"]:
        rows = s["rows"]
        fp32 = [r for r in rows if "FP32" in r["label"]]
        best_w = min(r["warm_ms"] for r in fp32)
        best_c = min(r["cold_ms"] for r in fp32)
        lines += ["", f"## W [{s['n']} x {s['k']}] (FP32 {s['n'] * s['k'] * 4 / 2**20:.0f} MiB; "
                  f"last-level cache {s['llc_bytes'] / 2**20:.0f} MiB)", "",
                  "| row | weight MiB | warm ms | cold ms | cold weight GB/s | "
                  "best FP32 / row, warm | best FP32 / row, cold | rel err vs FP32 |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['label']} | {r['weight_bytes'] / 2**20:.1f} | {r['warm_ms']:.3f} | "
                f"{r['cold_ms']:.3f} | {r['cold_gbps']:.1f} | {best_w / r['warm_ms']:.2f}x | "
                f"{best_c / r['cold_ms']:.2f}x | {r['rel_err_vs_fp32']:.1e} |")
        dgms = [r["weight_bytes"] for r in rows if "DGMS" in r["label"]]
        line = (f"- memory-bound time of the FP32 weights at the measured bandwidth: "
                f"{s['n'] * s['k'] * 4 / res['read_gbps'] / 1e6:.3f} ms")
        if dgms:
            line += (f"; the {s['bits']}-bit weight stream is "
                     f"{s['n'] * s['k'] * 4 / max(dgms):.1f}x smaller (the bound on the gain)")
        lines.append(line)
    lines += ["", "warm: one weight copy, calls repeated (time_evaluator); cold: calls rotate "
              "over copies filling 4x the last-level cache (Python loop). Medians over "
              "interleaved rounds; the JSON has each row's range."]
    return "\n".join(lines)


def device_counts(target: str, shapes, bits_list, log=None) -> dict:
    """M aarch64 instructions per call of each batch-1 dense kernel a codebook layer can run
    on ``target`` (the generic exact dense kernel, the lut GEMV's ``tbl`` and one-load
    forms) and of the FP32 GEMV, each measured alone on one local emulated device with the
    instruction-count plugin (deterministic). The kernels run on random operands: their
    numbers are checked against the oracles in ``tests/device``."""
    from ..device import manager
    from ..device.sysroot import run_dir
    from ..kernels.fp32 import dense
    from ..measure.jobs import Device, Job, kernel_job
    from ..schedules.hand import load_knobs

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    profile = get_profile(target)
    if profile.qemu_cpu is None:
        raise UserError(f"{target} is not an emulated Cortex-A target")
    knobs = load_knobs(profile)
    run_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gemv-arm-", dir=run_dir()))
    out = {"target": profile.name, "shapes": []}
    with manager.local_devices(profile.name, 1, log=log) as (tracker, _):
        dev = Device(tracker, profile.name, profile, work, True, 300.0)
        for n, k in shapes:
            rows = {}
            for bits in [32, *bits_list]:
                if bits == 32:
                    kernels = {"FP32 GEMV": kg.compute(kg.GemvSpec(
                        1, n, k, 32, arith="fp32", rows=kg.rows_for(n, "fp32")))}
                else:
                    kernels = {
                        "exact (generic dense)": dense.schedule(dense.compute(
                            dense.DenseSpec(1, n, k, bits=bits)), knobs["cb_dense"]),
                        "lut (tbl)": kg.compute(kg.GemvSpec(1, n, k, bits, arith="lut",
                                                            rows=32, form="tbl")),
                        "lut (one load per lookup)": kg.compute(kg.GemvSpec(
                            1, n, k, bits, arith="lut", rows=kg.rows_for(n, "lut"),
                            form="gather"))}
                for label, func in kernels.items():
                    func = func.with_attr("global_symbol", "main")
                    lib = tvm.compile(tvm.IRModule({"main": func}), target=profile.tvm_target())
                    path = work / f"kernel{len(list(work.glob('*.so')))}.so"
                    lib.export_library(str(path), fcompile=profile.cross_compiler())
                    res = kernel_job(Job(label, "kernel", label, path, "main"), dev, func, 1, 1)
                    rows.setdefault(label, {})[bits] = res["minstr"]
                    log(f"[{n}x{k}] {label}, {bits if bits < 32 else 'FP32'}: "
                        f"{res['minstr']:.3f} M")
            out["shapes"].append({"n": n, "k": k, "rows": rows})
        dev.close()
    return out


def format_device_counts(res: dict) -> str:
    lines = [f"# Batch-1 codebook dense kernels on an emulated {res['target']}: M aarch64 "
             "instructions per call (TCG plugin, one thread; in brackets the FP32 GEMV's "
             "count over the kernel's)"]
    for s in res["shapes"]:
        rows = s["rows"]
        fp32 = rows["FP32 GEMV"][32]
        bits = sorted({b for r in rows.values() for b in r if b < 32}, reverse=True)
        lines += ["", f"## W [{s['n']} x {s['k']}] (FP32 GEMV: {fp32:.3f} M)", "",
                  "| kernel | " + " | ".join(f"{b}-bit" for b in bits) + " |",
                  "|---|" + "---|" * len(bits)]
        for label, r in rows.items():
            if label == "FP32 GEMV":
                continue
            cells = [f"{r[b]:.3f} ({fp32 / r[b]:.2f}x)" for b in bits]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
