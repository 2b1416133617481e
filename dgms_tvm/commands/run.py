"""Run an artifact: x86 ones here, aarch64 ones on a device through a TVM tracker.
Inputs from .npy (one input) or .npz (several: by the model's input names, or in order where
NumPy named them arr_0, arr_1, ...). Input with NaN or Inf is refused unless
--allow-nonfinite (the kernels' clamps and int8 rounding turn it into finite numbers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import outputs
from ..cli import one_line_errors
from ..errors import UserError


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--artifact", type=Path, required=True, help="folder written by compile.py")
    p.add_argument("--input", type=Path, required=True, help=".npy, or .npz for several inputs")
    p.add_argument("--output", type=Path, required=True,
                   help=".npy for the first output (.npz: every output)")
    p.add_argument("--tracker", help="HOST:PORT for aarch64 artifacts (default: the devices "
                                     "scripts/device.py started, else $TVM_TRACKER_HOST:PORT)")
    p.add_argument("--key", help="device key (default: the artifact's target name)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="run input holding NaN or Inf (refused by default)")
    return p.parse_args(argv)


#: The first bytes of a .npy file and of a .npz (a zip) one.
MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


def load_inputs(path: Path, flag: str = "--input", named: bool = False):
    """The arrays of ``path``, in order; ``named``: a dict by name where an .npz names them
    (not NumPy's default ``arr_0``, ``arr_1``, ...: those are positional)."""
    import numpy as np

    what = flag.lstrip("-")  # "input", "calibration"
    if path.suffix not in MAGIC:
        raise UserError(f"{flag} {path}: expected a .npy file, or .npz for several inputs")
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise UserError(f"{what} file {path} not found") from None
    except OSError as err:
        raise UserError(f"{what} file {path}: {err.strerror}") from None
    if not head.startswith(MAGIC[path.suffix]):
        raise UserError(f"{path}: not a NumPy {path.suffix} file")
    try:
        data = np.load(path)
    except (ValueError, OSError) as err:  # an object array, a damaged file
        raise UserError(f"{path}: not a readable {path.suffix} file of arrays "
                        f"({str(err).splitlines()[0]})") from None
    if isinstance(data, np.ndarray):
        return [data]
    try:
        arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as err:  # an object array inside the zip
        raise UserError(f"{path}: not a readable {path.suffix} file of arrays "
                        f"({str(err).splitlines()[0]})") from None
    positional = all(k == f"arr_{i}" for i, k in enumerate(arrays))
    return arrays if named and not positional else list(arrays.values())


def check_output(path: Path) -> None:
    """Before the run: a name NumPy keeps as given, in a location it can be written to."""
    if path.suffix not in MAGIC:
        raise UserError(f"--output {path}: must end in .npy (the first output) or .npz "
                        "(every output)")
    if path.is_dir():
        raise UserError(f"--output {path} is a folder")
    outputs.check_writable(path)


@one_line_errors
def main(argv=None):
    args = parse(argv)
    import numpy as np

    from .. import pipeline

    check_output(args.output)
    if args.output.resolve() == args.input.resolve():
        raise UserError(f"--output {args.output} is the --input file: the run would overwrite "
                        "it; give another name")
    inputs = load_inputs(args.input, named=True)
    results = pipeline.run_artifact(args.artifact, inputs, args.tracker, args.key,
                                    allow_nonfinite=args.allow_nonfinite)
    if args.output.suffix == ".npz":
        outputs.write_atomic(args.output, lambda tmp: np.savez(tmp, *results))
    else:
        outputs.write_atomic(args.output, lambda tmp: np.save(tmp, results[0]))
    print(f"wrote {args.output}: " + ", ".join(f"{o.dtype}{list(o.shape)}" for o in results))

