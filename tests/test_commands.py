"""The ``dgms-tvm`` console command and the script shims that run the same subcommands."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dgms_tvm import commands

ROOT = Path(__file__).resolve().parents[1]
CONSOLE = Path(sys.executable).parent / "dgms-tvm"  # installed by setup.sh (pip install -e)


def _run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_console_command_lists_every_subcommand():
    res = _run(str(CONSOLE), "--help")
    assert res.returncode == 0, res.stderr
    assert all(f"  {name} " in res.stdout for name in commands.COMMANDS)


def test_help_imports_neither_tvm_nor_torch():
    res = _run(sys.executable, "-c", "import sys; from dgms_tvm import commands; "
               "commands.main(['--help']); print(sorted(m for m in ('tvm', 'torch') "
               "if m in sys.modules))")
    assert res.returncode == 0 and res.stdout.strip().endswith("[]"), res.stdout + res.stderr


@pytest.mark.parametrize("argv,needle", [(["frob"], "unknown command 'frob'"),
                                         (["compile", "--target", "cortex-a999"],
                                          "unknown target 'cortex-a999'")])
def test_bad_input_is_one_line_and_exit_code_2(argv, needle):
    res = _run(sys.executable, "-m", "dgms_tvm", *argv)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr


def test_no_command_prints_usage_and_exit_code_2():
    res = _run(sys.executable, "-m", "dgms_tvm")
    assert res.returncode == 2 and res.stderr.startswith("usage: dgms-tvm")


def test_subcommand_usage_names_the_command():
    res = _run(sys.executable, "-m", "dgms_tvm", "run", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: dgms-tvm run")


@pytest.mark.parametrize("name", sorted(commands.COMMANDS))
def test_each_script_is_a_shim_of_its_subcommand(name):
    spec = importlib.util.spec_from_file_location(f"{name}_shim", ROOT / "scripts" / f"{name}.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    assert shim.main is importlib.import_module(f"dgms_tvm.commands.{name}").main
    assert len((ROOT / "scripts" / f"{name}.py").read_text().splitlines()) < 20


def test_code_fingerprint_is_the_same_for_the_same_build(tmp_path):
    """scripts/code_fingerprint.py, the check of a structural change: two runs of one
    checkout agree, and an FP32 build differs from the DGMS one."""
    outs = []
    for i in range(2):
        res = _run(sys.executable, "scripts/code_fingerprint.py", "--models", "digitnet",
                   "--targets", "x86", "--strategies", "exact", "--json",
                   str(tmp_path / f"{i}.json"))
        assert res.returncode == 0, res.stderr
        outs.append(json.loads((tmp_path / f"{i}.json").read_text()))
    assert outs[0] == outs[1] and set(outs[0]) == {"digitnet x86 exact", "digitnet x86 FP32"}
    assert outs[0]["digitnet x86 exact"]["code"] != outs[0]["digitnet x86 FP32"]["code"]


def test_compile_refuses_calibration_inputs_it_cannot_use(tmp_path):
    """One line, exit code 2, no artifact: inputs of another shape, a file that is no
    NumPy file, a missing file."""
    bad = tmp_path / "cal.npy"
    np.save(bad, np.zeros((2, 3, 5, 5), np.float32))
    text = tmp_path / "text.npy"
    text.write_text("not numpy")
    for path, needle in ((bad, "calibration input of shape [2, 3, 5, 5]"),
                         (text, "not a NumPy .npy file"),
                         (tmp_path / "none.npz", "calibration file")):
        out = tmp_path / f"art-{path.stem}"
        res = _run(sys.executable, "-m", "dgms_tvm", "compile", "--model", "digitnet",
                   "--target", "x86", "--output", str(out), "--calibration", str(path),
                   "--quiet")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr
        assert not out.exists()


@pytest.mark.slow
def test_compile_calibrates_on_the_given_inputs(tmp_path):
    """A stack of 3 inputs: the manifest says which layers write int8 at scales calibrated
    on them: on a dotprod core the 17 depthwise convs, the 16 expand convs and the stem
    (the int8 depthwise convs' inputs), and the last project conv (the 1x1 conv after it)."""
    cal = tmp_path / "cal.npy"
    np.save(cal, np.random.default_rng(0).normal(size=(3, 1, 3, 32, 32)).astype(np.float32))
    res = _run(sys.executable, "-m", "dgms_tvm", "compile", "--model", "mobilenetv2-32",
               "--target", "neoverse-n1", "--output", str(tmp_path / "art"),
               "--calibration", str(cal), "--tuning-logs", "none")
    assert res.returncode == 0, res.stderr
    assert "int8 between layers: 36 layers" in res.stdout
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["calibration"] == {"layers": 36, "inputs": 3, "source": "--calibration"}
    assert sum("int8 for the next int8 conv" in r["output"] for r in manifest["layers"]) == 36
