"""The ``dgms-tvm`` command: one subcommand per module here (``scripts/<name>.py`` runs the
same one). ``--help`` imports nothing heavy: a subcommand's module is imported when it runs."""

from __future__ import annotations

import importlib
import sys

#: Subcommand -> what it does (its module: ``dgms_tvm.commands.<name>``).
COMMANDS = {
    "compile": "compile a model (built-in, .onnx or .pt2) into an artifact folder",
    "run": "run an artifact: x86 here, aarch64 on a device through a TVM tracker",
    "device": "start, list or stop emulated Cortex-A devices behind a TVM tracker",
    "bench": "FP32 against DGMS on Cortex-A devices, side by side, with the onnxruntime peers",
    "tune": "tune a model's kernels with MetaSchedule into the target's tuning database",
    "quantize": "train a built-in model, DGMS-quantize it and export it (.pt2 or .onnx)",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: dgms-tvm COMMAND [options]   (dgms-tvm COMMAND --help for its options)", "",
             "Compile DGMS-quantized networks with Apache TVM for ARM Cortex-A CPUs.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The console entry point: ``dgms-tvm COMMAND ...``."""
    from ..cli import run_script

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        try:
            print(usage(), file=sys.stdout if argv else sys.stderr, flush=True)
        except BrokenPipeError:  # (``| head``)
            return 141
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r} (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{name}")
    sys.argv[0] = f"dgms-tvm {name}"  # argparse's prog in the subcommand's usage lines
    return run_script(lambda: module.main(rest))
