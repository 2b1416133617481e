"""The RPC harness end to end: a tracker and an emulated Cortex-A72 started in the test
session itself; ARM kernels and a whole model run on it and match their oracles; faults give
clear errors; a killed device is restarted; stop leaves no process behind."""

import os
import time

import numpy as np
import psutil
import pytest
import torch
import tvm

from dgms_tvm import choice, compiler, frontend, pipeline, zoo
from dgms_tvm.device import client, manager, state
from dgms_tvm.errors import UserError
from dgms_tvm.kernels import gemv
from dgms_tvm.kernels.common import FP32_WEIGHT
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.fp32 import conv2d, dense, depthwise
from dgms_tvm.kernels.int8 import (
    depthwise as int8_dw,
)
from dgms_tvm.kernels.int8 import (
    gathered,
    sdot,
    smmla,
    widening,
)
from dgms_tvm.kernels.int8 import (
    lut as int8_lut,
)
from dgms_tvm.kernels.int8.operands import decode, quantize
from dgms_tvm.kernels.int8.operands import weights as int8_weights
from dgms_tvm.quant import hard_quantize
from dgms_tvm.schedules import load_knobs
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, rel_err
from tests.models.blocks import BLOCKS, user_onnx
from tests.passes.graphs import Block

CPU = "cortex-a72"
DOTPROD = "neoverse-n1"
IN_ORDER = "cortex-a53"
I8MM = "neoverse-n2"


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    run = tmp_path_factory.mktemp("devices")
    old = os.environ.get("DGMS_TVM_RUN_DIR")
    os.environ["DGMS_TVM_RUN_DIR"] = str(run)
    # Two devices under one key; a dotprod core under its own key, for the sdot kernels; the
    # in-order core of the Raspberry Pi 3, for the lookup-table conv; an i8mm core (QEMU's
    # max CPU), for the smmla conv. All start at once, then are waited for.
    counts = {CPU: 2, DOTPROD: 1, IN_ORDER: 1, I8MM: 1}
    info = manager.start(CPU, count=2, log=lambda *_: None, wait=False)
    for key, n in counts.items():
        if key != CPU:
            manager.start(key, count=n, tracker=info["tracker"], log=lambda *_: None,
                          wait=False)
    tracker = client.Tracker(*client.parse_tracker(info["tracker"]))
    for key, n in counts.items():
        manager.wait_for_devices(tracker, key, n, registered=True)
    yield tracker, run
    pids = [e["pid"] for e in state.load()]
    groups = set(pids)
    members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) in groups]
    assert members, "the started processes were not found"
    manager.stop(log=lambda *_: None)
    time.sleep(0.5)
    left = [p for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind after stop: {left}"
    assert not tracker.reachable()
    if old is None:
        os.environ.pop("DGMS_TVM_RUN_DIR")
    else:
        os.environ["DGMS_TVM_RUN_DIR"] = old


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _run_kernel_remote(tracker, func, args, tmp_path, cpu=CPU):
    return _run_kernels_remote(tracker, [(func, args)], tmp_path, cpu)[-1]


def _decoded_weight(rng, spec, ds, knobs, calls, limit=127):
    """A random codebook weight for ``spec``: (its int8 values, ``D``, the conv's weight
    operand), the tbl decode kernel's call (in ``ds``'s layout) appended to ``calls`` after
    the quantize (call 0, whose ``s_x`` it reads)."""
    cw = random_codebook_weight(rng, spec.weight_shape, spec.bits, scaled=spec.scaled)
    q, d = int8_weights.quantize_codebook(cw.codebook, cw.scale, spec.out_channels, limit)
    calls.append((decode.schedule(decode.compute(ds), knobs["q8_decode"]),
                  [decode.pack_for_decode(ds, cw.indices()), int8_weights.q16(q),
                   (0, 2), np.zeros(ds.shape, np.int8)]))
    return q[cw.indices()], d, [(len(calls) - 1, 3)]


def _run_kernels_remote(tracker, calls, tmp_path, cpu=CPU):
    """Run kernels one after the other on one device of ``cpu``; an argument may be
    ``(i, j)``: output ``j`` of call ``i``, left on the device. Returns each call's last
    output."""
    profile = get_profile(cpu)
    mod = tvm.IRModule({f"k{i}": f.with_attr("global_symbol", f"k{i}")
                        for i, (f, _) in enumerate(calls)})
    lib = tvm.compile(mod, target=profile.tvm_target())
    path = tmp_path / f"kernels-{cpu}.so"
    lib.export_library(str(path), fcompile=profile.cross_compiler())
    sess = tracker.request(cpu, timeout=120)
    sess.upload(str(path))
    rlib = sess.load_module(path.name)
    dev = sess.cpu()
    done = []
    for i, (_, args) in enumerate(calls):
        targs = [done[a[0]][a[1]] if isinstance(a, tuple) else
                 tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args]
        rlib[f"k{i}"](*targs)
        done.append(targs)
    return [t[-1].numpy() for t in done]


@pytest.mark.parametrize("bits,scaled", [(3, True), (4, False)])
def test_conv2d_kernels_run_on_the_emulated_core(device, bits, scaled, tmp_path, rng):
    tracker, _ = device
    for spec in (conv2d.Conv2dSpec(1, 16, 9, 9, 32, (3, 3), (2, 2), (1, 1, 1, 1), bits=bits,
                                   scaled=scaled),
                 conv2d.Conv2dSpec(1, 16, 8, 8, 16, (3, 3), (1, 1), (1, 1, 1, 1), groups=16,
                                   bits=bits, scaled=scaled)):
        cw = random_codebook_weight(rng, spec.weight_shape, bits, scaled=scaled)
        x = rng.normal(size=(1, 16, spec.height, spec.width)).astype(np.float32)
        func = conv2d.schedule(conv2d.compute(spec), load_knobs(CPU)["cb_conv2d"])
        args = [x, cw.packed, cw.codebook] + ([cw.scale] if scaled else [])
        got = _run_kernel_remote(tracker, func, [*args, np.zeros(spec.out_shape, np.float32)],
                                 tmp_path)
        assert rel_err(got, conv2d.reference(spec, x, cw.dense())) < 1e-5, spec.name


@pytest.mark.parametrize("cpu", [CPU, DOTPROD])
def test_depthwise_kernels_run_on_emulated_cores(device, cpu, tmp_path, rng):
    """The depthwise kernel with its epilogue (ld2 copy at stride 2, fmla by element; a
    7-wide plane in 7-lane vectors), codebook and float32 weights."""
    tracker, _ = device
    calls, wants = [], []
    for conv, act in ((conv2d.Conv2dSpec(1, 8, 12, 12, 8, (3, 3), (2, 2), (1, 1, 1, 1),
                                         groups=8, bits=4), "relu6"),
                      (conv2d.Conv2dSpec(1, 6, 7, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1),
                                         groups=6, bits=FP32_WEIGHT), "relu")):
        spec = depthwise.DepthwiseSpec(conv, act=act)
        func = depthwise.schedule(depthwise.compute(spec), load_knobs(cpu)["dw_conv2d"])
        x = rng.normal(size=(1, conv.in_channels, conv.height, conv.width)).astype(np.float32)
        m = (rng.random(conv.out_channels) + 0.5).astype(np.float32)
        b = rng.normal(size=conv.out_channels).astype(np.float32)
        if spec.fp32:
            w = rng.normal(size=conv.weight_shape).astype(np.float32)
            weights = [(w * m[:, None, None, None]).reshape(conv.out_channels, -1)]
        else:
            cw = random_codebook_weight(rng, conv.weight_shape, conv.bits)
            w, weights = cw.dense(), [cw.packed, cw.codebook, m]
        calls.append((func, [x, *weights, b, np.zeros(conv.out_shape, np.float32)]))
        wants.append(depthwise.reference(spec, x, w, m, b))
    for got, want in zip(_run_kernels_remote(tracker, calls, tmp_path, cpu), wants):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("cpu", [CPU, DOTPROD])
def test_depthwise_writing_int8_feeds_the_int8_conv_on_emulated_cores(device, cpu, tmp_path,
                                                                     rng):
    """int8 between layers: the depthwise conv writes the next 1x1 int8 conv's input (fcvtns,
    st4 / zips into the conv's layout; depth 4 for the sdot conv, 16 for the widening one),
    the conv reads it with the fixed scale; both against the oracles chained."""
    tracker, _ = device
    knobs = load_knobs(cpu)
    dw = conv2d.Conv2dSpec(1, 32, 14, 14, 32, (3, 3), (2, 2), (1, 1, 1, 1), groups=32, bits=4)
    pw = conv2d.Conv2dSpec(1, 32, 7, 7, 16, (1, 1), bits=4)
    wide = cpu == CPU  # the widening conv (no sdot)
    ls = widening.LongSpec(pw, Epilogue(True, False, ""))
    qs = ls.quant if wide else quantize.QuantSpec.of(pw)
    ds = decode.DecodeSpec.of(pw, 16 if wide else 4)
    spec = depthwise.DepthwiseSpec(dw, act="relu6", out=qs)
    x = rng.normal(size=(1, 32, 14, 14)).astype(np.float32)
    cw = random_codebook_weight(rng, dw.weight_shape, 4)
    scale = np.float32(0.02)  # the calibrated one: many outputs past 127 * scale, clamped
    m = ((rng.random(32) + 0.5) / scale).astype(np.float32)
    b = (rng.normal(size=32) / scale).astype(np.float32)
    pcw = random_codebook_weight(rng, pw.weight_shape, 4)
    q, d = int8_weights.quantize_codebook(pcw.codebook, None, 16, ls.limit if wide else 127)
    bias = rng.normal(size=16).astype(np.float32)
    conv = (widening.schedule(widening.compute(ls), knobs["q8l_conv2d"]) if wide else
            sdot.schedule(sdot.compute(pw, predecoded=True, epilogue=Epilogue(True)),
                          knobs["q8_conv2d"]))
    calls = [(depthwise.schedule(depthwise.compute(spec), knobs["dw_conv2d"]),
              [x, cw.packed, cw.codebook, m, b, np.zeros(qs.out_shape, qs.dtype)]),
             (decode.schedule(decode.compute(ds), knobs["q8_decode"]),
              [decode.pack_for_decode(ds, pcw.indices()), int8_weights.q16(q),
               np.array([scale], np.float32), np.zeros(ds.shape, np.int8)]),
             (conv, [(0, 5), np.array([scale], np.float32), (1, 3), d, bias,
                     np.zeros(pw.out_shape, np.float32)])]
    got_q, _, got = _run_kernels_remote(tracker, calls, tmp_path, cpu)
    want_q = depthwise.reference(spec, x, cw.dense(), m, b)
    diff = np.abs(got_q.astype(np.int64) - want_q.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert (want_q == 127).any() and (want_q == 0).any()  # clamped at both ends
    xq = np.clip(np.rint(depthwise.reference(
        depthwise.DepthwiseSpec(dw, act="relu"), x, cw.dense(), m, b)), 0, 127)
    acc = conv2d.reference(pw, xq, q[pcw.indices()].astype(np.float64))
    want = Epilogue(True).numpy(acc * (scale * d)[None, :, None, None], bias)
    assert rel_err(got, want) < 1e-2


def _planes(q: np.ndarray, qs) -> np.ndarray:
    """int8 values in ``qs``'s layout (unpadded, one phase) back as ``[N, C, H, W]``."""
    n, h, g, _, _, d = q.shape
    x = q[:, :, :, 0, :qs.width, :].astype(np.int64).transpose(0, 2, 4, 1, 3)
    return x.reshape(n, g * d, h, qs.width)[:, :qs.channels]


@pytest.mark.parametrize("cpu", [DOTPROD, CPU])
def test_int8_chain_through_the_int8_depthwise_on_emulated_cores(device, cpu, tmp_path, rng):
    """MobileNetV2's block all int8 on the emulated cores: the expand conv (sdot, or the
    widening conv without dotprod) writes int8, the int8 depthwise conv (smull / smlal,
    fcvtns) reads it in the same channel groups (4, or 16) and writes the project conv's
    input, which reads it with the fixed scale; each stage against its oracle on the stage
    before's output."""
    tracker, _ = device
    knobs, wide = load_knobs(cpu), cpu == CPU
    depth, limit = (16, widening.WEIGHT_LIMIT) if wide else (4, 127)
    pw1 = conv2d.Conv2dSpec(1, 16, 14, 14, 32, (1, 1), bits=4)
    dwc = conv2d.Conv2dSpec(1, 32, 14, 14, 32, (3, 3), (1, 1), (1, 1, 1, 1), groups=32, bits=4)
    pw2 = conv2d.Conv2dSpec(1, 32, 14, 14, 16, (1, 1), bits=2)
    mid = int8_dw.Int8DwSpec(dwc, act="relu6", depth=depth).inp
    spec = int8_dw.Int8DwSpec(dwc, act="relu6", depth=depth,
                              out=quantize.QuantSpec.of(pw2, depth=depth))
    x = rng.normal(size=(1, 16, 14, 14)).astype(np.float32)
    xq, sx = quantize.reference(quantize.QuantSpec.of(pw1, depth=depth), x)
    s1, s2 = np.float32(0.02), np.float32(0.03)  # calibrated scales: outputs clamped
    cw1, cw2 = (random_codebook_weight(rng, p.weight_shape, p.bits) for p in (pw1, pw2))
    q1, d1 = int8_weights.quantize_codebook(cw1.codebook, None, 32, limit)
    q2, d2 = int8_weights.quantize_codebook(cw2.codebook, None, 16, limit)
    b1, b2 = (rng.normal(size=c).astype(np.float32) for c in (32, 16))
    wq = rng.integers(-127, 128, size=dwc.weight_shape).astype(np.int8)
    dd = (rng.random(32) * 0.01).astype(np.float32)
    bd = rng.normal(size=32).astype(np.float32)
    ep = Epilogue(True, False, "relu6")

    def conv(pw, cw, q, epilogue, out=None):  # (kernel, its weight operands)
        if wide:
            ls = widening.LongSpec(pw, epilogue, out=out)
            w = decode.conv_order(decode.DecodeSpec.of(pw, 16), q[cw.indices()])
            return widening.schedule(widening.compute(ls), knobs["q8l_conv2d"]), [w]
        func = sdot.compute(pw, epilogue=epilogue, out=out)
        return sdot.schedule(func, knobs["q8_conv2d"]), [cw.packed, q]

    (k1, w1), (k2, w2) = conv(pw1, cw1, q1, ep, mid), conv(pw2, cw2, q2, Epilogue(True))
    calls = [(k1, [xq, np.array([sx]), *w1, d1 / s1, b1 / s1,
                   np.zeros(mid.out_shape, np.int8)]),
             (int8_dw.schedule(int8_dw.compute(spec), knobs["q8_dw_conv2d"]),
              [(0, 4 + len(w1)), np.array([s1]), int8_dw.weights(spec, wq), dd / s2, bd / s2,
               np.zeros(spec.out.out_shape, np.int8)]),
             (k2, [(1, 5), np.array([s2]), *w2, d2, b2, np.zeros(pw2.out_shape, np.float32)])]
    got1, got2, got = _run_kernels_remote(tracker, calls, tmp_path, cpu)

    def near(a, b):  # a float32 tie rounded the other way by a fused multiply-add
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        return diff.max() <= 1 and (diff > 0).mean() < 2e-3

    y1 = sdot.reference(pw1, x, cw1.indices(), q1, d1) + b1[None, :, None, None]
    want1 = quantize.quantize_fixed(np.maximum(y1, 0), s1)
    assert near(_planes(got1, mid), want1) and (want1 == 127).any()
    x2 = _planes(got1, mid)
    want2 = int8_dw.reference(spec, x2, s1, wq, dd / s2, bd / s2)
    assert near(got2, want2) and (want2 == 127).any() and (want2 == 0).any()
    acc = conv2d.reference(pw2, _planes(got2, spec.out), q2[cw2.indices()].astype(np.float64))
    want = Epilogue(True).numpy(acc * (s2 * d2)[None, :, None, None], b2)
    assert rel_err(got, want) < 1e-5


def test_dense_kernel_runs_on_the_emulated_core(device, tmp_path, rng):
    tracker, _ = device
    spec = dense.DenseSpec(2, 48, 100, bits=2)
    cw = random_codebook_weight(rng, spec.weight_shape, 2)
    x = rng.normal(size=(2, 100)).astype(np.float32)
    func = dense.schedule(dense.compute(spec), load_knobs(CPU)["cb_dense"])
    got = _run_kernel_remote(tracker, func, [x, cw.packed, cw.codebook,
                                             np.zeros(spec.out_shape, np.float32)], tmp_path)
    assert rel_err(got, dense.reference(spec, x, cw.dense())) < 1e-5
    # the batch-1 float32 dense (an FP32 classifier): the generic GEMV kernel
    gs = gemv.GemvSpec(1, 40, 96, 32, arith="fp32", rows=gemv.rows_for(40, "fp32"))
    assert not gemv.supports(gs, get_profile(CPU))
    w = rng.normal(size=(40, 96)).astype(np.float32)
    x1 = rng.normal(size=(1, 96)).astype(np.float32)
    got = _run_kernel_remote(tracker, gemv.compute(gs), [x1, w, np.zeros((1, 40), np.float32)],
                             tmp_path)
    assert rel_err(got, gemv.reference(gs, x1, w, None)) < 1e-5


@pytest.mark.parametrize("cpu,bits,form", [(CPU, 2, "tbl"), (DOTPROD, 1, "tbl"),
                                           (DOTPROD, 3, "tbl"), (CPU, 2, "gather")])
def test_lut_gemv_runs_on_the_emulated_cores(device, tmp_path, rng, cpu, bits, form):
    """The lut GEMV (tables of the 16 sums of 2 or 4 products, of the 8 codebook products at
    3 bits; a partial last tile) in its aarch64 forms (tbl on the tables' byte planes; one
    load per lookup), with and without dotprod."""
    tracker, _ = device
    ls = gemv.GemvSpec(1, 40, 96, bits, arith="lut", rows=gemv.rows_for(40, "lut", form),
                       form=form)
    assert not gemv.supports(ls, get_profile(cpu))
    cw = random_codebook_weight(rng, (40, 96), bits, scaled=True)
    x1 = rng.normal(size=(1, 96)).astype(np.float32)
    got = _run_kernel_remote(tracker, gemv.compute(ls), [
        x1, *gemv.operands(ls, cw.indices(), cw.codebook, cw.scale),
        np.zeros((1, 40), np.float32)], tmp_path, cpu)
    assert rel_err(got, gemv.reference(ls, x1, cw.indices(), cw.codebook, cw.scale)) < 1e-5


def test_gemv_instruction_count_bench_on_the_emulated_core(device):
    """scripts/bench_gemv_arm.py's figures at a small shape: every kernel counted, on the
    devices already serving the key (none started or stopped)."""
    from dgms_tvm.bench import gemv_kernels

    res = gemv_kernels.device_counts(CPU, [(40, 64)], [2], log=lambda m: None)
    rows = res["shapes"][0]["rows"]
    assert set(rows) == {"FP32 GEMV", "exact (generic dense)", "lut (tbl)",
                         "lut (one load per lookup)"}
    assert all(v > 0 for r in rows.values() for v in r.values())
    assert "| lut (tbl) |" in gemv_kernels.format_device_counts(res)
    assert manager.serving(device[0], CPU) == 2


def test_devices_serving_under_a_key_are_counted(device):
    tracker, _ = device
    assert manager.serving(tracker, CPU) == 2 and manager.serving(tracker, DOTPROD) == 1
    assert manager.serving(tracker, "no-such-key") == 0


def test_int8_kernels_run_on_the_emulated_dotprod_core(device, tmp_path, rng):
    """Quantize + (tbl decode) + int8 conv: sdot on the dotprod core (4 pixels per load, the
    input deinterleaved by the column stride; accumulators pixel-major, or channel-major from
    64 input channels)."""
    tracker, _ = device
    cpu = DOTPROD
    knobs = load_knobs(cpu)["q8_conv2d"]
    assert knobs["dot"] == "sdot"
    for spec in (conv2d.Conv2dSpec(1, 16, 9, 9, 32, (3, 3), (2, 2), (1, 1, 1, 1), bits=4,
                                   scaled=True),
                 conv2d.Conv2dSpec(1, 6, 7, 7, 16, (3, 3), (1, 1), (1, 1, 1, 1), bits=3),
                 conv2d.Conv2dSpec(1, 16, 8, 8, 32, (1, 1), bits=4),
                 # 64 input channels: the channel-major sdot accumulators (int8.channel_major)
                 conv2d.Conv2dSpec(1, 64, 6, 6, 8, (3, 3), (1, 1), (1, 1, 1, 1), bits=4),
                 # a float32 stem, its weight int8 per channel
                 conv2d.Conv2dSpec(1, 3, 17, 17, 16, (7, 7), (2, 2), (3, 3, 3, 3),
                                   bits=FP32_WEIGHT)):
        x = rng.normal(size=(1, spec.in_channels, spec.height, spec.width)).astype(np.float32)
        qs, ds = quantize.QuantSpec.of(spec), decode.DecodeSpec.of(spec)
        calls = [(quantize.schedule(quantize.compute(qs), {}),
                  [x, np.zeros(qs.out_shape, np.int8), np.zeros(1, np.float32)])]
        if spec.bits == FP32_WEIGHT:
            wq, d = int8_weights.quantize_weight(rng.normal(size=spec.weight_shape))
            weights, predecoded = [decode.conv_order(ds, wq)], True
        else:
            cw = random_codebook_weight(rng, spec.weight_shape, spec.bits, scaled=spec.scaled)
            q, d = int8_weights.quantize_codebook(cw.codebook, cw.scale, spec.out_channels)
            wq, predecoded = q[cw.indices()], ds.supported()
        if spec.bits != FP32_WEIGHT and predecoded:  # 4-bit: the NEON tbl decode kernel
            assert load_knobs(cpu)["q8_decode"]["lookup"] == "tbl"
            calls.append((decode.schedule(decode.compute(ds), load_knobs(cpu)[
                "q8_decode"]), [decode.pack_for_decode(ds, cw.indices()),
                                int8_weights.q16(q), (0, 2), np.zeros(ds.shape, np.int8)]))
            weights = [(1, 3)]
        elif spec.bits != FP32_WEIGHT:  # 3-bit: decoded inside the conv
            weights = [cw.packed, q]
        # the 1x1 conv with the BatchNorm shift, residual and relu after it in its epilogue
        ep = Epilogue(True, True, "relu") if spec.kernel == (1, 1) else Epilogue()
        b = rng.normal(size=spec.out_channels).astype(np.float32)
        r = rng.normal(size=spec.out_shape).astype(np.float32)
        extra = ([b] if ep.bias else []) + ([r] if ep.residual else [])
        calls.append((sdot.schedule(sdot.compute(spec, predecoded=predecoded, epilogue=ep),
                                    knobs),
                      [(0, 1), (0, 2), *weights, d, *extra,
                       np.zeros(spec.out_shape, np.float32)]))
        got = _run_kernels_remote(tracker, calls, tmp_path, cpu)[-1]
        want = ep.numpy(sdot.reference_int8(spec, x, wq, d), b, r)
        assert rel_err(got, want) < 1e-6, spec.name


@pytest.mark.parametrize("cpu", [CPU, IN_ORDER])
def test_lookup_table_conv_runs_on_emulated_cores(device, cpu, tmp_path, rng):
    """The lookup-table conv of 1- and 2-bit layers (tbl over two tables, sadalp, tables
    rounded by sqrshrn) behind its depth-16 quantize, on the Cortex-A72 and the in-order
    A53: exactly its oracle. A 3x3 with padding and the epilogue (a 7-wide plane in
    flattened tiles), a 1x1 stride 2 (tables only where the stride lands), 24 channels
    padded to 32 at 1 bit, and every input at 127 against the largest entry (each 16-bit lane
    at its bound), writing int8 for the next conv."""
    tracker, _ = device
    knobs = load_knobs(cpu)
    assert knobs["q8t_conv2d"]["lookup"] == "tbl"
    S = conv2d.Conv2dSpec
    cases = [(S(1, 32, 7, 7, 32, (3, 3), (1, 1), (1, 1, 1, 1), bits=2),
              Epilogue(True, False, "relu"), None),
             (S(1, 48, 10, 10, 16, (1, 1), (2, 2), bits=2), Epilogue(True, True), None),
             (S(1, 24, 9, 9, 8, (3, 3), (2, 2), (1, 1, 1, 1), bits=1), Epilogue(), None),
             (S(1, 512, 2, 4, 16, (1, 1), bits=2), Epilogue(), "max")]
    for spec, ep, extreme in cases:
        out = quantize.QuantSpec(*spec.out_shape, depth=16) if extreme else None
        ls = int8_lut.LutSpec.of(spec, knobs["q8t_conv2d"]["tile"], epilogue=ep, out=out)
        qs = ls.quant
        if extreme:
            x = np.ones((1, spec.in_channels, spec.height, spec.width), np.float32)
            idx = np.full(spec.weight_shape, 3)
            qcb = np.array([0, 0, 0, int8_lut.limit(2)], np.int8)
        else:
            x = rng.normal(size=(1, spec.in_channels, spec.height, spec.width))
            x = x.astype(np.float32)
            idx = rng.integers(0, 1 << spec.bits, size=spec.weight_shape)
            lim = int8_lut.limit(spec.bits)
            qcb = np.concatenate([[0], rng.integers(-lim, lim + 1, (1 << spec.bits) - 1)])
        d = rng.uniform(0.5, 1.5, spec.out_channels).astype(np.float32) / 64
        if extreme:  # 128 tables of 126 (2 x 127 x 127 rounded by 256): 127.0
            d = np.ones(spec.out_channels, np.float32)
        b = rng.normal(size=spec.out_channels).astype(np.float32)
        r = rng.normal(size=spec.out_shape).astype(np.float32)
        extra = ([b] if ep.bias else []) + ([r] if ep.residual else [])
        y = np.zeros(spec.out_shape, np.float32) if out is None else np.full(
            out.out_shape, 77, np.int8)
        calls = [(quantize.schedule(quantize.compute(qs), {}),
                  [x, np.zeros(qs.out_shape, np.int8), np.zeros(1, np.float32)]),
                 (int8_lut.schedule(int8_lut.compute(ls), knobs["q8t_conv2d"]),
                  [(0, 1), (0, 2), int8_lut.pack(ls, idx),
                   int8_lut.entries(ls, qcb.astype(np.int8)), d, *extra, y])]
        got = _run_kernels_remote(tracker, calls, tmp_path, cpu)[-1]
        want = ep.numpy(int8_lut.reference(ls, x, idx, qcb, d), b, r)
        if out is None:
            assert rel_err(got, want) < 1e-6, ls.name
        else:
            assert np.array_equal(got, sdot.reference_out(out, want, False)), ls.name
            assert (got == 127).all()


def test_choice_by_the_cycle_estimate_on_the_emulated_a72(device, tmp_path):
    """``compile --choose`` on cortex-a72: every kernel of the lookup-table build and of the
    widening one counted alone on the emulated core; each 2-bit conv gets both estimates
    and the kernel of fewer cycles (a conv that is the same kernel in both builds keeps it:
    its instructions agree, its estimates may not)."""
    tracker, _ = device
    torch.manual_seed(0)
    net = Block().eval()
    hard_quantize(net, 2)
    imported = frontend.from_torch(net, (torch.randn(1, 8, 12, 12),))
    a72 = get_profile(CPU)
    lut = compiler.lower(imported, 2, strategy="int8", profile=a72)
    wide = compiler.lower(imported, 2, strategy="int8-widening", profile=a72)
    got = choice.by_cycles(lut, wide, a72, "int8", tracker, CPU, tmp_path, workers=2)
    kernels = {r.name: r.kernel for r in wide.records}
    for r in lut.records:
        if r.name not in ("c2.weight", "c3.weight", "c4.weight"):
            continue
        c = got[r.name]
        assert set(c["mcycles"]) == set(c["minstr"]) == {"int8", "int8-widening"}
        assert min(c["mcycles"].values()) > 0 and min(c["minstr"].values()) > 0
        if r.kernel == kernels[r.name]:  # the same conv in both builds (c3, c4): kept
            assert c["chosen"] == "int8" and c["minstr"]["int8"] == c["minstr"]["int8-widening"]
        else:  # c2: the lookup tables or the widening conv, by the estimate
            assert c["chosen"] == min(c["mcycles"],
                                      key=lambda k: (c["mcycles"][k], k != "int8"))


def test_widening_int8_kernels_run_on_the_emulated_a72(device, tmp_path, rng):
    """The int8 conv of a core without sdot (kernels.int8.widening: smull / smlal(2) / sadalp
    over 32 input channels, weights within +-63; and with 8-bit weights, int8-full), with
    its depth-16 quantize and tbl decode in front: a 4-bit codebook with the epilogue, a
    2-bit one with stride 2 over 16 channels (one group of 16 alone), 24 channels padded to
    32, 5- and 7-wide planes in flattened tiles, a float32 weight quantized per channel, and
    48 channels of 8-bit weights."""
    tracker, _ = device
    knobs = load_knobs(CPU)
    lim = widening.WEIGHT_LIMIT  # the weights' range: 4 products in a 16-bit lane
    for spec, ep, limit in (
            (conv2d.Conv2dSpec(1, 32, 8, 8, 8, (1, 1), bits=4, scaled=True),
             Epilogue(True, True, "relu"), lim),
            (conv2d.Conv2dSpec(1, 16, 9, 9, 8, (3, 3), (2, 2), (1, 1, 1, 1), bits=2),
             Epilogue(), lim),
            (conv2d.Conv2dSpec(1, 24, 6, 6, 4, (3, 3), (1, 1), (1, 1, 1, 1), bits=4),
             Epilogue(True, False, "relu6"), lim),
            (conv2d.Conv2dSpec(1, 16, 7, 7, 8, (3, 3), (1, 1), (1, 1, 1, 1), bits=FP32_WEIGHT),
             Epilogue(), lim),
            # int8-full: 8-bit weights, one group of 16 per step
            (conv2d.Conv2dSpec(1, 48, 6, 6, 8, (3, 3), (1, 1), (1, 1, 1, 1), bits=4),
             Epilogue(True, False, "relu"), 127)):
        ls = widening.LongSpec(spec, ep, limit=limit)
        qs, ds = ls.quant, decode.DecodeSpec.of(spec, depth=16)
        x = rng.normal(size=(1, spec.in_channels, spec.height, spec.width)).astype(np.float32)
        calls = [(quantize.schedule(quantize.compute(qs), knobs["q8_quant"]),
                  [x, np.zeros(qs.out_shape, np.int8), np.zeros(1, np.float32)])]
        if spec.bits == FP32_WEIGHT:
            wq, d = int8_weights.quantize_weight(rng.normal(size=spec.weight_shape), limit)
            weights = [decode.conv_order(ds, wq)]
        else:
            wq, d, weights = _decoded_weight(rng, spec, ds, knobs, calls, limit)
        b = rng.normal(size=spec.out_channels).astype(np.float32)
        r = rng.normal(size=spec.out_shape).astype(np.float32)
        extra = ([b] if ep.bias else []) + ([r] if ep.residual else [])
        calls.append((widening.schedule(widening.compute(ls), knobs["q8l_conv2d"]),
                      [(0, 1), (0, 2), *weights, d, *extra,
                       np.zeros(spec.out_shape, np.float32)]))
        got = _run_kernels_remote(tracker, calls, tmp_path, CPU)[-1]
        want = ep.numpy(sdot.reference_int8(spec, x, wq, d), b, r)
        assert rel_err(got, want) < 1e-6, spec.name


def test_gathered_int8_stem_runs_on_the_emulated_a72(device, tmp_path, rng):
    """The 3-channel stem on a core without sdot (kernels.int8.gathered): its quantize (4
    channels innermost), the gather of its 3x3 / 7x7 window's taps into 16-channel groups,
    and the widening 1x1 conv over them (with relu6, and writing float32), against the int8
    oracle of the conv itself."""
    tracker, _ = device
    knobs = load_knobs(CPU)
    for spec, ep in ((conv2d.Conv2dSpec(1, 3, 18, 18, 8, (3, 3), (2, 2), (1, 1, 1, 1)),
                      Epilogue(True, False, "relu6")),
                     (conv2d.Conv2dSpec(1, 3, 15, 13, 4, (7, 7), (2, 2), (3, 3, 3, 3)),
                      Epilogue())):
        ic = gathered.Im2colSpec(spec)
        pw = ic.pointwise
        x = rng.normal(size=(1, 3, spec.height, spec.width)).astype(np.float32)
        wq, d = int8_weights.quantize_weight(rng.normal(size=spec.weight_shape),
                                             widening.WEIGHT_LIMIT)
        w = decode.conv_order(decode.DecodeSpec.of(pw, depth=16),
                              gathered.columns(ic, wq))
        b = rng.normal(size=spec.out_channels).astype(np.float32)
        calls = [(quantize.schedule(quantize.compute(ic.inp), knobs["q8_quant"]),
                  [x, np.zeros(ic.inp.out_shape, np.int8), np.zeros(1, np.float32)]),
                 (gathered.compute(ic), [(0, 1), np.zeros(ic.out.out_shape, np.int8)]),
                 (widening.schedule(widening.compute(widening.LongSpec(pw, ep)),
                                    knobs["q8l_conv2d"]),
                  [(1, 1), (0, 2), w, d, *([b] if ep.bias else []),
                   np.zeros(spec.out_shape, np.float32)])]
        got = _run_kernels_remote(tracker, calls, tmp_path, CPU)[-1]
        want = ep.numpy(sdot.reference_int8(spec, x, wq, d), b, None)
        assert rel_err(got, want) < 1e-6, spec.name


def test_smmla_kernels_run_on_the_emulated_i8mm_core(device, tmp_path, rng):
    """Quantize (8-channel groups) + tbl decode + the smmla conv on the emulated neoverse-n2
    (QEMU's max CPU, SVE at 128 bits): stride 2 with odd sizes, channels that fill no group,
    a 1x1 conv with its epilogue, the float32 stem, and every input at +-127 against weights
    at +-127 writing int8 for the next conv."""
    tracker, _ = device
    knobs = load_knobs(I8MM)
    assert knobs["q8m_conv2d"]["mmla"] == "smmla"
    S = conv2d.Conv2dSpec
    for spec, ep, extreme in (
            (S(1, 16, 9, 11, 32, (3, 3), (2, 2), (1, 1, 1, 1), bits=4), Epilogue(), False),
            (S(1, 6, 7, 7, 12, (3, 3), (1, 1), (1, 1, 1, 1), bits=4), Epilogue(), False),
            (S(1, 24, 8, 8, 32, (1, 1), bits=2), Epilogue(True, True, "relu"), False),
            (S(1, 3, 17, 17, 16, (7, 7), (2, 2), (3, 3, 3, 3), bits=FP32_WEIGHT), Epilogue(),
             False),
            (S(1, 32, 6, 8, 16, (3, 3), (1, 1), (1, 1, 1, 1), bits=FP32_WEIGHT),
             Epilogue(bias=True), True)):
        x = rng.normal(size=(1, spec.in_channels, spec.height, spec.width)).astype(np.float32)
        qs = quantize.QuantSpec.of(spec, depth=smmla.DEPTH)
        ds = decode.DecodeSpec.of(spec, smmla.DEPTH)
        if extreme:
            x = np.where(x < 0, -1.0, 1.0).astype(np.float32)
            wq, d = np.where(rng.random(spec.weight_shape) < 0.5, -127, 127).astype(
                np.int8), np.full(spec.out_channels, 0.1, np.float32)
        elif spec.bits == FP32_WEIGHT:
            wq, d = int8_weights.quantize_weight(rng.normal(size=spec.weight_shape))
        calls = [(quantize.schedule(quantize.compute(qs), {}),
                  [x, np.zeros(qs.out_shape, np.int8), np.zeros(1, np.float32)])]
        if spec.bits == FP32_WEIGHT:
            weights = [decode.conv_order(ds, wq)]
        else:
            wq, d, weights = _decoded_weight(rng, spec, ds, knobs, calls)
        b = rng.normal(size=spec.out_channels).astype(np.float32)
        r = rng.normal(size=spec.out_shape).astype(np.float32)
        extra = ([b] if ep.bias else []) + ([r] if ep.residual else [])
        func = smmla.compute(spec, predecoded=True, epilogue=ep)
        want = ep.numpy(sdot.reference_int8(spec, x, wq, d), b, r)
        out = None
        if extreme:  # int8 for the next smmla conv: sums of +-127 * 127 * 288 clamp
            out = quantize.QuantSpec(1, 16, 6, 8, depth=smmla.DEPTH)
            func = smmla.KERNEL.int8_out.make(func, out)[1]
            want = sdot.reference_out(out, want, relu=False)
        calls.append((smmla.schedule(func, knobs["q8m_conv2d"]),
                       [(0, 1), (0, 2), *weights, d, *extra,
                        np.zeros(spec.out_shape if out is None else out.out_shape,
                                 np.float32 if out is None else np.int8)]))
        got = _run_kernels_remote(tracker, calls, tmp_path, I8MM)[-1]
        if out is None:
            assert rel_err(got, want) < 1e-6, spec.name
        else:
            diff = np.abs(got.astype(np.int64) - want)
            assert (np.abs(want) == 127).mean() > 0.2 and diff.max() <= 1
            assert (diff > 0).mean() < 2e-3  # (a float32 tie rounded the other way)


def test_int8_model_on_the_emulated_i8mm_core(device, tmp_path):
    """ResNet-18 (32x32) for neoverse-n2: every conv the smmla conv, run on the emulated
    core, gives the numbers of the same lowered module built for this host (the plain
    code: the same integer sums); the artifact is refused on the neoverse-n1 device, whose
    core lacks i8mm, before it runs."""
    tracker, _ = device
    profile = get_profile(I8MM)
    loaded = pipeline.load_model("resnet18-32", 4, 0)
    build = pipeline.build_model(loaded, profile, 4, False, strategy="auto")
    convs = [r for r in build.lowered.records if r.lowered and r.op == "conv2d"]
    assert convs and all(r.kernel.startswith("q8m_conv2d_") for r in convs)
    pipeline.write_artifact(build, profile, tmp_path / "art")
    x = loaded.example()
    (got,) = pipeline.run_artifact(tmp_path / "art", [x], tracker=str(tracker))
    host = compiler.run_local(compiler.build(build.lowered, get_profile("x86")), [x])[0]
    assert rel_err(got, host) < 1e-4 and np.argmax(got) == np.argmax(host)
    with pytest.raises(UserError, match=r"^artifact is built for neoverse-n2 and uses .*\+i8mm"
                                        r".*which the neoverse-n1 device lacks$"):
        pipeline.run_artifact(tmp_path / "art", [x], tracker=str(tracker), key=DOTPROD)


def test_int8_model_on_the_emulated_a72_matches_its_host_build(device, tmp_path):
    """ResNet-18 (32x32) in the int8 strategy for cortex-a72: its convs the widening kernel
    (the 3-channel stem's taps gathered into a 1x1 one), run on the emulated core, give the
    numbers of the same lowered module built for this host (the kernels' plain vector forms:
    the same integer sums), and
    stay close to PyTorch's exact output (8 % of the largest logit here: 17 int8 layers of
    random weights)."""
    tracker, _ = device
    profile = get_profile(CPU)
    loaded = pipeline.load_model("resnet18-32", 4, 0)
    build = pipeline.build_model(loaded, profile, 4, False, strategy="auto")
    assert build.manifest["strategy"]["resolved"] == "int8"
    convs = [r for r in build.lowered.records if r.lowered and r.op == "conv2d"]
    assert convs and all(r.kernel.startswith("q8l_conv2d_") for r in convs)
    stem = [r for r in build.lowered.records if r.op == "conv2d" and not r.lowered]
    assert len(stem) == 1 and "_c32_" in stem[0].fp32_kernel and "_k1x1_" in stem[0].fp32_kernel
    pipeline.write_artifact(build, profile, tmp_path / "art")
    x = loaded.example()
    (got,) = pipeline.run_artifact(tmp_path / "art", [x], tracker=str(tracker))
    host = compiler.run_local(compiler.build(build.lowered, get_profile("x86")), [x])[0]
    assert rel_err(got, host) < 1e-4 and np.argmax(got) == np.argmax(host)
    want = loaded.torch_model(torch.from_numpy(x)).detach().numpy()
    assert np.argmax(got) == np.argmax(want) and rel_err(got, want) < 0.15  # int8 rounding


#: Each block of the models users bring (tests/models/blocks.py) on one of two cores:
#: cortex-a72 (the widening conv) or neoverse-n1 (the sdot conv: grouped convs of 4 channels,
#: ShuffleNetV2's 58 outputs computed as 60).
BLOCK_CORES = [(name, DOTPROD if name in ("dense", "efficientnet", "grouped", "shuffle")
                else CPU) for name in sorted(BLOCKS)]


@pytest.mark.parametrize("name,cpu", BLOCK_CORES)
def test_blocks_of_the_models_users_bring_run_on_the_emulated_cores(device, tmp_path, name,
                                                                     cpu):
    """Each block exported as a user exports it, built by default (int8) for the core, runs
    on the emulated core and gives the numbers of the same lowering built for this host."""
    tracker, _ = device
    blob, x = user_onnx(name)
    (tmp_path / "m.onnx").write_bytes(blob)
    profile = get_profile(cpu)
    build = pipeline.build_model(pipeline.load_model(str(tmp_path / "m.onnx"), 4), profile,
                                 4, False, strategy="auto")
    assert any((r.strategy or "").startswith("int8") for r in build.lowered.records), name
    pipeline.write_artifact(build, profile, tmp_path / "art")
    x = x.numpy()
    (got,) = pipeline.run_artifact(tmp_path / "art", [x], tracker=str(tracker))
    host = compiler.run_local(compiler.build(build.lowered, get_profile("x86")), [x])[0]
    assert rel_err(got, host) < 1e-4, (name, cpu)


@pytest.mark.parametrize("cpu,conv", [(DOTPROD, "q8_conv2d_"), (CPU, "q8l_conv2d_")])
def test_zero_skipped_model_runs_on_the_emulated_cores(device, tmp_path, rng, cpu, conv):
    """Input channels with all-zero weights dropped (a ``take`` before the conv and the
    dense): the model built for neoverse-n1 (the sdot conv) and cortex-a72 (the widening
    conv: 12 channels left, padded to 16) runs on the emulated core and gives the numbers of
    the same lowering built for this host."""
    from tests.passes.test_zero_skip import _pruned_net

    tracker, _ = device
    net = _pruned_net(rng)
    x = rng.normal(size=(1, 16, 8, 8)).astype(np.float32)
    torch.export.save(torch.export.export(net, (torch.from_numpy(x),)), tmp_path / "m.pt2")
    profile = get_profile(cpu)
    loaded = pipeline.load_model(str(tmp_path / "m.pt2"), 4)
    build = pipeline.build_model(loaded, profile, 4, False, strategy="auto")
    assert [r.zero_inputs for r in build.lowered.records] == [4, 64]
    assert build.lowered.records[0].kernel.startswith(conv)
    pipeline.write_artifact(build, profile, tmp_path / "art")
    (got,) = pipeline.run_artifact(tmp_path / "art", [x], tracker=str(tracker))
    host = compiler.run_local(compiler.build(build.lowered, get_profile("x86")), [x])[0]
    assert rel_err(got, host) < 1e-5


@pytest.fixture(scope="module")
def arm_model(tmp_path_factory):
    """The exact strategy on the emulated core (the int8 one is a72's default)."""
    out = tmp_path_factory.mktemp("arm") / "art"
    pipeline.compile_model("resnet18-32", CPU, out, bits=4, quiet=True, strategy="exact")
    built = zoo.build("resnet18-32", 4, seed=0)
    return out, built.example_input.numpy(), built.model(built.example_input).detach().numpy()


def test_whole_model_runs_on_the_emulated_device(device, arm_model):
    tracker, _ = device
    folder, x, want = arm_model
    (got,) = pipeline.run_artifact(folder, [x], tracker=str(tracker))
    assert rel_err(got, want) < 1e-4


def test_faults_give_clear_errors(device, arm_model, tmp_path):
    tracker, _ = device
    folder, x, _ = arm_model
    with pytest.raises(UserError, match=r"no device registered under key 'board-x'.*cortex-a72"):
        pipeline.run_artifact(folder, [x], tracker=str(tracker), key="board-x")
    with pytest.raises(UserError, match=r"tracker 127\.0\.0\.1:1 is unreachable"):
        pipeline.run_artifact(folder, [x], tracker="127.0.0.1:1")
    a76 = tmp_path / "a76"
    pipeline.compile_model("digitnet", "cortex-a76", a76, bits=4, quiet=True)
    with pytest.raises(UserError, match=r"uses \+dotprod, \+v8.2a, which the cortex-a72"):
        pipeline.run_artifact(a76, [np.zeros((1, 1, 8, 8), np.float32)],
                              tracker=str(tracker), key=CPU)


def test_bench_report_from_the_emulated_device(device, tmp_path):
    import json

    from dgms_tvm.bench import on_device

    tracker, _ = device
    rep = on_device.run("digitnet", 4, CPU, tracker, None, tmp_path, repeat=3,
                        strategy="exact")
    files = {p.name for p in tmp_path.iterdir()}
    assert {"report.json", "report.md", "report.png", "fp32", "dgms-w4"} <= files
    doc = json.loads((tmp_path / "report.json").read_text())
    assert [r["label"] for r in doc["rows"]] == [
        "FP32", "DGMS 4-bit", "onnxruntime FP32 (peer)",
        *(f"onnxruntime int8 {c} (peer)" for c in
          ("U8S8 QDQ", "S8S8 QDQ", "U8S8 QOperator", "S8S8 QOperator"))]
    # Ours is held against the fastest of onnxruntime's int8 configurations on this core.
    int8 = {r["label"]: r["minstr"] for r in doc["rows"] if "int8" in r["label"]}
    assert doc["fastest_int8_peer"] == min(int8, key=int8.get)
    assert (f"fastest onnxruntime int8 configuration on this core: "
            f"{doc['fastest_int8_peer'][len('onnxruntime int8 '):-len(' (peer)')]}"
            in (tmp_path / "report.md").read_text())
    # ... and by the second measure, which may name another configuration
    by_cycles = {r["label"]: r["mcycles"] for r in doc["rows"] if "int8" in r["label"]}
    fastest = min(by_cycles, key=by_cycles.get)
    assert (f"fastest by estimated cycles: "
            f"{fastest[len('onnxruntime int8 '):-len(' (peer)')]}; its cycles / DGMS = "
            f"{by_cycles[fastest] / doc['rows'][1]['mcycles']:.2f}x"
            in (tmp_path / "report.md").read_text())
    assert all(r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
               for r in doc["rows"])
    assert doc["rows"][1]["lowered"] == 3 and doc["size_ratio"] > 4
    assert doc["max_rel_err_vs_fp32"] < 1e-4
    assert "emulation times, not ARM speed" in (tmp_path / "report.md").read_text()
    assert rep["speedup_time"] == pytest.approx(doc["speedup_time"])
    assert all(r["minstr"] > 0 for r in doc["rows"])
    assert doc["instruction_ratio"] == pytest.approx(
        doc["rows"][0]["minstr"] / doc["rows"][1]["minstr"])
    # Both measures for every row (ours and the peers): estimated cycles beside instructions.
    assert all(r["mcycles"] > 0.2 * r["minstr"] for r in doc["rows"])
    assert doc["cycle_ratio"] == pytest.approx(
        doc["rows"][0]["mcycles"] / doc["rows"][1]["mcycles"])
    assert doc["cycle_model"] == "cortex-a57 (standing in for cortex-a72)"
    assert "estimated-cycle ratio FP32 / DGMS" in (tmp_path / "report.md").read_text()
    # ... and where the cycles go: every row names its costliest blocks, by mnemonics.
    for r in doc["rows"]:
        assert 0 < len(r["hot"]) <= 3 and all(0 < h["share"] <= 1 and h["mix"]
                                              for h in r["hot"])
    assert "## Where the estimated cycles go" in (tmp_path / "report.md").read_text()
    # The jobs spread over both devices under the key: each device's counter log holds the
    # markers of the jobs it ran.
    assert doc["devices"] == 2
    _, run = device
    logs = sorted(run.glob(f"insn-{CPU}-*.txt"))
    assert len(logs) == 2 and all(len(f.read_text().splitlines()) >= 4 for f in logs)
    # Per layer: one row per kernel call of main, both builds, with counts that add up to
    # most of the whole-model figure.
    layers = doc["layers"]
    assert len(layers) >= 10
    for i, label in enumerate(["FP32", "DGMS 4-bit"]):
        assert all(layer[label]["minstr"] > 0 for layer in layers)
        total = sum(layer[label]["minstr"] for layer in layers)
        assert 0.7 < total / doc["rows"][i]["minstr"] < 1.05
        cycles = sum(layer[label]["mcycles"] for layer in layers)
        assert 0.6 < cycles / doc["rows"][i]["mcycles"] < 1.1
    assert sum("cb_conv2d" in layer["DGMS 4-bit"]["kernel"] for layer in layers) == 3
    assert "## Per layer" in (tmp_path / "report.md").read_text()
    # ... summed by kind of layer (digitnet's convs are 3x3 ones; the rest is other)
    kinds = {layer["kind"] for layer in layers}
    assert "other" in kinds and any(k.startswith("3x3") for k in kinds)
    assert "## By kind of layer" in (tmp_path / "report.md").read_text()


def test_bench_retries_once_when_a_device_dies_mid_run(device, tmp_path, monkeypatch):
    from dgms_tvm.bench import on_device

    tracker, _ = device
    real = on_device._model_job
    killed = []

    def dying(job, dev, *args):
        if not killed:  # the device dies under the first job: every qemu server is killed
            (sup,) = [e for e in state.load()
                      if e["kind"] == "supervisor" and e["key"] == CPU]
            for c in psutil.Process(sup["pid"]).children():
                if "qemu" in " ".join(c.cmdline()):
                    os.killpg(c.pid, 9)
                    killed.append(c.pid)
        return real(job, dev, *args)

    monkeypatch.setattr(on_device, "_model_job", dying)
    rep = on_device.run("digitnet", 4, CPU, tracker, None, tmp_path, repeat=1,
                        peers=False, per_layer=False, strategy="exact")
    assert killed and rep["max_rel_err_vs_fp32"] < 1e-4
    assert all(r["minstr"] > 0 for r in rep["rows"])
    manager.wait_for_devices(tracker, CPU, 2, timeout=180)


def test_bench_gives_a_clear_error_when_the_retry_fails_too(device, tmp_path, monkeypatch):
    from dgms_tvm.bench import on_device

    tracker, _ = device

    def broken(job, dev, *args):
        raise RuntimeError("Socket closed")

    monkeypatch.setattr(on_device, "_model_job", broken)
    with pytest.raises(UserError, match="failed twice on devices under key"):
        on_device.run("digitnet", 4, CPU, tracker, None, tmp_path, repeat=1,
                      peers=False, per_layer=False)
    manager.wait_for_devices(tracker, CPU, 2, timeout=60)  # sessions given back


def test_a_kernel_with_an_instruction_the_core_lacks_is_named(device, tmp_path):
    """The smmla conv sent to the neoverse-n1 device (no i8mm) past the artifact check: the
    device dies of SIGILL on both tries, and the run names the kernel and why; the
    supervisor brings the device back."""
    from dgms_tvm.measure.jobs import Job, kernel_job, run_jobs

    tracker, _ = device
    spec = conv2d.Conv2dSpec(1, 16, 6, 8, 16, (3, 3), padding=(1, 1, 1, 1), bits=FP32_WEIGHT)
    func = smmla.schedule(smmla.compute(spec, predecoded=True),
                          load_knobs(I8MM)["q8m_conv2d"]).with_attr("global_symbol", "k0")
    n2 = get_profile(I8MM)
    path = tmp_path / "smmla.so"
    tvm.compile(tvm.IRModule({"k0": func}), target=n2.tvm_target()).export_library(
        str(path), fcompile=n2.cross_compiler())
    jobs = [Job("kernel k0", "kernel", "", path, "k0")]
    with pytest.raises(UserError, match=r"^kernel k0 failed twice .*: the device died of "
                                        r"signal 4 \(Illegal instruction\): an instruction "
                                        r"the emulated neoverse-n1 lacks$"):
        run_jobs(jobs, lambda job, dev: kernel_job(job, dev, func, 1, 1), tracker, DOTPROD,
                 get_profile(DOTPROD), tmp_path, False, 1, timeout=180)
    manager.wait_for_devices(tracker, DOTPROD, 1, timeout=180)


def test_instruction_counts_are_stable_within_a_process(device, arm_model, tmp_path):
    import tvm
    from tvm import relax

    from dgms_tvm.device.insn import Counter

    tracker, _ = device
    folder, x, _ = arm_model
    sess = tracker.request(CPU, timeout=120)
    counter = Counter(sess, get_profile(CPU), CPU, tmp_path)
    sess.upload(str(folder / "model.so"), "m.so")
    dev = sess.cpu()
    vm = relax.VirtualMachine(sess.load_module("m.so"), dev)
    arg = tvm.runtime.tensor(x, dev)

    def evaluator(n):
        return lambda: vm.time_evaluator("main", dev, number=n, repeat=1)(arg)

    a, b = counter.per_call(evaluator), counter.per_call(evaluator)
    assert a > 1e6
    assert abs(a - b) / a < 1e-3


def test_killed_device_is_restarted_and_logged(device, arm_model):
    tracker, run = device
    (sup,) = [e for e in state.load()
                      if e["kind"] == "supervisor" and e["key"] == CPU]
    servers = [c for c in psutil.Process(sup["pid"]).children() if "qemu" in " ".join(
        c.cmdline())]
    assert servers
    os.killpg(servers[0].pid, 9)
    manager.wait_for_devices(tracker, CPU, 1, timeout=180)
    deadline = time.time() + 30
    while "restarting" not in (run / "events.log").read_text() and time.time() < deadline:
        time.sleep(0.5)
    assert "exited with code" in (run / "events.log").read_text()
    # The restarted device serves again.
    manager.wait_for_devices(tracker, CPU, 1, timeout=180)
    folder, x, want = arm_model
    (got,) = pipeline.run_artifact(folder, [x], tracker=str(tracker), timeout=180)
    assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("how", ["instructions", "cycles"])
def test_tuning_through_the_tracker_by_instruction_counts(device, tmp_path, rng, how):
    """A tiny MetaSchedule run measured on the emulated devices (instruction counts, or
    estimated cycles, both devices as runners); the applied kernel runs on the device and
    matches the oracle."""
    from dgms_tvm.schedules import apply_records, tuning_db
    from dgms_tvm.tune import tuner
    from tests.tune.test_tuner import dense_task

    tracker, _ = device
    profile = get_profile(CPU)
    spec = dense.DenseSpec(1, 32, 64, bits=4)
    db = tuning_db.open_database(tmp_path / "logs", create=True)
    measure = tuner.make_measure(profile, how, tracker, CPU, 2, tmp_path / "w")
    done, costs, hand = tuner.tune_task(db, dense_task(spec), 4, profile.tvm_target(),
                                        load_knobs(CPU), measure, tmp_path, per_iter=3)
    assert done == 4 and hand is not None and costs[0] <= hand
    # run_secs hold 1e-9 per instruction (or estimated cycle): a 1x32x64 kernel is thousands.
    assert all(1e-6 < c < 1e-2 for c in costs)
    mod, how = apply_records.apply_database(tvm.IRModule({"k": dense.compute(spec)}), db,
                                            profile.tvm_target(), load_knobs(CPU))
    assert how == {"k": "tuned"}
    cw = random_codebook_weight(rng, spec.weight_shape, spec.bits)
    x = rng.normal(size=(1, spec.k)).astype(np.float32)
    got = _run_kernel_remote(tracker, mod["k"], [x, cw.packed, cw.codebook,
                                                 np.zeros(spec.out_shape, np.float32)],
                             tmp_path)
    assert rel_err(got, dense.reference(spec, x, cw.dense())) < 1e-5
