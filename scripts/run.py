#!/usr/bin/env python3
"""Run an artifact: x86 ones here, aarch64 ones on a device through a TVM tracker.
Inputs from .npy (one input) or .npz (several, in order)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgms_tvm.cli import one_line_errors, run_script
from dgms_tvm.errors import UserError


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--artifact", type=Path, required=True, help="folder written by compile.py")
    p.add_argument("--input", type=Path, required=True, help=".npy, or .npz for several inputs")
    p.add_argument("--output", type=Path, required=True,
                   help=".npy for the first output (.npz: every output)")
    p.add_argument("--tracker", help="HOST:PORT for aarch64 artifacts (default: the devices "
                                     "scripts/device.py started, else $TVM_TRACKER_HOST:PORT)")
    p.add_argument("--key", help="device key (default: the artifact's target name)")
    return p.parse_args(argv)


def load_inputs(path: Path):
    import numpy as np

    try:
        data = np.load(path)
    except FileNotFoundError:
        raise UserError(f"input file {path} not found") from None
    except (ValueError, OSError) as err:
        raise UserError(f"{path}: not a .npy/.npz file ({err})") from None
    if isinstance(data, np.ndarray):
        return [data]
    return [data[k] for k in data.files]


@one_line_errors
def main(argv=None):
    args = parse(argv)
    import numpy as np

    from dgms_tvm import pipeline

    outputs = pipeline.run_artifact(args.artifact, load_inputs(args.input), args.tracker,
                                    args.key)
    if args.output.suffix == ".npz":
        np.savez(args.output, *outputs)
    else:
        np.save(args.output, outputs[0])
    print(f"wrote {args.output}: " + ", ".join(f"{o.dtype}{list(o.shape)}" for o in outputs))


if __name__ == "__main__":
    sys.exit(run_script(main))
