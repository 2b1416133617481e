#!/usr/bin/env python3
"""The model bench: torchvision architectures as a user brings them (random weights, DGMS
codebooks in every conv but the first, exported to ONNX), side by side per model:

- per core (--targets): codebook layers lowered by the default build and the share of their
  multiply-adds on int8 kernels (every build is also lowered and scheduled: an internal
  error is a failure of the bench);
- the exact build against onnxruntime FP32 on this host (goal: 1e-5 of the largest output);
- the default build's int8 numerics of --numerics (built here: integer sums are exact) against
  exact over --inputs random inputs: top-1 agreement and median error, beside onnxruntime
  static int8's least (goal: at most 1.2x);
- with --count CORE: M instructions / M estimated cycles per inference of our FP32 and DGMS
  builds and onnxruntime FP32 and int8 on that emulated core (goal on neoverse-n1: fewer than
  onnxruntime int8's fastest and at most half of onnxruntime FP32's).

  python scripts/bench_models.py --output out/models
  python scripts/bench_models.py --models efficientnet_b0 --count neoverse-n1 --output out/m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script

ACCURACY_GOAL = 1.2


def parse(argv):
    from dgms_tvm.bench.models import ARCHITECTURES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", default=",".join(ARCHITECTURES),
                   help="torchvision architectures, comma-separated")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--targets", default="x86,cortex-a72,neoverse-n1,neoverse-n2")
    p.add_argument("--numerics", default="neoverse-n1",
                   help="whose int8 numerics the accuracy columns measure")
    p.add_argument("--inputs", type=int, default=64, help="random inputs for the accuracy")
    p.add_argument("--count", default="none",
                   help="an emulated core to count instructions on, or none")
    p.add_argument("--output", type=Path, default=Path("out/models"))
    args = p.parse_args(argv)
    from dgms_tvm.format import FormatError, check_bits
    from dgms_tvm.targets import get_profile

    try:
        check_bits(args.bits)
    except FormatError as err:
        p.error(str(err))
    args.profiles = [get_profile(t) for t in args.targets.split(",")]
    get_profile(args.numerics)
    if args.count != "none" and get_profile(args.count).qemu_cpu is None:
        p.error(f"--count {args.count}: no emulated device for that core")
    if args.inputs < 1:
        p.error("--inputs must be at least 1")
    return args


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_one(name, args) -> dict:
    import numpy as np
    import onnxruntime as ort

    from dgms_tvm import compiler, pipeline, strategies
    from dgms_tvm.bench import accuracy, models

    path = args.output / f"{name}-w{args.bits}.onnx"
    if not path.exists():
        models.user_export(name, args.bits, path)
    loaded = pipeline.load_model(str(path), args.bits)
    row = {"model": name, "onnx": str(path), "cores": {}}
    for profile in args.profiles:
        lowered = compiler.lower(loaded.imported, args.bits, profile=profile,
                                 strategy=strategies.resolve("auto", profile))
        compiler.prepare(lowered, profile)
        row["cores"][profile.name] = models.int8_share(lowered.records)
    x = loaded.example()
    host = next(p for p in args.profiles if p.is_x86) if any(
        p.is_x86 for p in args.profiles) else None
    from dgms_tvm.targets import get_profile

    host = host or get_profile("x86")
    exact = compiler.run_local(compiler.build(compiler.lower(
        loaded.imported, args.bits, profile=host), host), [x])[0]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    row["exact_vs_onnxruntime"] = pipeline.rel_err(exact, ref)
    rng = np.random.default_rng(0)
    shape = loaded.imported.inputs[0][1]
    inputs = [rng.normal(size=shape).astype(np.float32) for _ in range(args.inputs)]
    builds = accuracy.builds(loaded.imported, args.bits, args.numerics, "int8", x)
    row["int8"] = accuracy.compare(builds, inputs)
    peers = accuracy.peer_errors(loaded, str(path), builds, inputs)
    row["onnxruntime_int8"] = peers
    least = min(e["median_rel_err"] for e in peers.values())
    row["error_ratio"] = row["int8"]["chained"]["median_rel_err"] / least if least else None
    if args.count != "none":
        row["counts"] = _count(path, args)
    return row


def _count(path, args) -> dict:
    from dgms_tvm.bench import on_device
    from dgms_tvm.device import manager

    out = args.output / f"{path.stem}-{args.count}"
    with manager.local_devices(args.count, 2, log=_log) as (tracker, _):
        rep = on_device.run(str(path), args.bits, args.count, tracker, None, out,
                            per_layer=False)
    return {r["label"]: [r["minstr"], r["mcycles"]] for r in rep["rows"]}


def table(rows, args) -> list[str]:
    cores = [p.name for p in args.profiles]
    lines = ["| model | " + " | ".join(f"{c}: int8 share of codebook MACs (layers)"
                                        for c in cores)
             + " | exact vs onnxruntime FP32 | int8 top-1 / median err "
             f"({args.numerics}) | onnxruntime int8 least err | ours / theirs |",
             "|---" * (len(cores) + 5) + "|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | **{r['failed']}** |" + " |" * (len(cores) + 3))
            continue
        shares = [f"{r['cores'][c]['int8_mac_share']:.1%} ({r['cores'][c]['int8_layers']}/"
                  f"{r['cores'][c]['codebook_layers']})" for c in cores]
        c = r["int8"]["chained"]
        least = min(e["median_rel_err"] for e in r["onnxruntime_int8"].values())
        ratio = r["error_ratio"]
        lines.append(f"| {r['model']} | " + " | ".join(shares)
                     + f" | {r['exact_vs_onnxruntime']:.1e} | {c['top1_agreement']:.0%} / "
                     f"{c['median_rel_err']:.2e} | {least:.2e} | "
                     + (f"{ratio:.2f}x" if ratio is not None else "-") + " |")
    counted = [r for r in rows if "counts" in r]
    if counted:
        lines += ["", f"M instructions / M estimated cycles per inference on the emulated "
                  f"{args.count}:", "", "| model | FP32 | DGMS | onnxruntime FP32 | fastest "
                  "onnxruntime int8 | onnxruntime FP32 / DGMS | onnxruntime int8 / DGMS |",
                  "|---|---|---|---|---|---|---|"]
        for r in counted:
            k = r["counts"]
            fp32, dgms = k["FP32"], next(v for lb, v in k.items() if lb.startswith("DGMS"))
            ort = k.get("onnxruntime FP32 (peer)")
            int8 = min((v for lb, v in k.items() if "int8" in lb), key=lambda v: v[0])
            lines.append(f"| {r['model']} | {fp32[0]:.1f} / {fp32[1]:.1f} | {dgms[0]:.1f} / "
                         f"{dgms[1]:.1f} | {ort[0]:.1f} / {ort[1]:.1f} | {int8[0]:.1f} / "
                         f"{int8[1]:.1f} | {ort[0] / dgms[0]:.2f}x | {int8[0] / dgms[0]:.2f}x |")
    return lines


@one_line_errors
def main(argv=None):
    args = parse(argv)
    from dgms_tvm.bench import models
    from dgms_tvm.errors import UserError

    names = [n for n in args.models.split(",") if n]
    for n in names:
        if n not in models.ARCHITECTURES and n not in models.SEGMENTATION:
            models.architecture(n)  # an unknown name fails here, before the work
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        _log(f"[{i}/{len(names)}] {name}")
        try:
            rows.append(bench_one(name, args))
        except UserError as err:
            rows.append({"model": name, "failed": str(err)})
        _log(f"  {time.perf_counter() - t0:.0f} s")
        (args.output / "models.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = table(rows, args)
    (args.output / "models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
