#!/usr/bin/env python3
"""Fingerprint the code each build generates: a hash of its assembly per (model, target,
strategy, FP32 or DGMS), and for x86 builds a hash of their outputs on a fixed input.

Two checkouts that print the same fingerprints generate the same instructions, so their
instruction counts per inference are the same: the check of a structural change, in minutes
and without a device. ``--root`` picks the checkout whose ``dgms_tvm`` builds (an older
commit in a git worktree, say); debug line records (``.loc``, ``.file``: TVMScript source
lines) are left out of the hash, being no instructions.

  python scripts/code_fingerprint.py --json after.json
  git worktree add ../before <commit>
  python scripts/code_fingerprint.py --root ../before --json before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=HERE, help="the checkout to build with")
    p.add_argument("--models", default="resnet18,mobilenetv2")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--targets", default="neoverse-n1,cortex-a72,x86")
    p.add_argument("--strategies", default="auto,exact")
    p.add_argument("--json", type=Path, help="write the fingerprints here")
    return p.parse_args(argv)


def _asm(executable) -> str:
    lines = "".join(m.inspect_source("s") for m in executable.mod.imports).splitlines()
    return "\n".join(x for x in lines if not x.lstrip().startswith((".loc", ".file")))


def main(argv=None) -> int:
    args = parse(argv)
    sys.path.insert(0, str(args.root.resolve()))
    import numpy as np

    from dgms_tvm import compiler, pipeline
    from dgms_tvm.targets import get_profile

    out = {}
    for model in args.models.split(","):
        loaded = pipeline.load_model(model, args.bits)
        x = np.random.default_rng(0).standard_normal(
            loaded.imported.inputs[0][1]).astype(np.float32)
        for target in args.targets.split(","):
            profile = get_profile(target)
            builds = [(s, False) for s in args.strategies.split(",")] + [("auto", True)]
            for strategy, fp32 in builds:
                b = pipeline.build_model(loaded, profile, args.bits, fp32,
                                         tuning_logs=args.root / "tuning_logs",
                                         strategy=strategy)
                entry = {"code": hashlib.sha256(_asm(b.executable).encode()).hexdigest()[:16],
                         "tuned kernels": b.manifest["tuning"]["matched"]}
                if not profile.is_arm:
                    y = compiler.run_local(b.executable, [x])[0]
                    entry["outputs"] = hashlib.sha256(y.tobytes()).hexdigest()[:16]
                key = f"{model} {target} {'FP32' if fp32 else strategy}"
                out[key] = entry
                print(f"{key:<36} {json.dumps(entry)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
