"""The CLIs as a user runs them: compile (x86 and aarch64), run, and every bad input giving
one clear line, a non-zero exit code, and nothing half-written."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dgms_tvm import frontend, zoo
from dgms_tvm.kernels.int8 import sdot
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import compile as compile_cli  # noqa: E402
import run as run_cli  # noqa: E402

MODEL = "resnet18-32"


def _cli(main, argv, capsys):
    """Exit code and the error lines; a failure must end with exactly one ``error:`` line
    (progress lines may come before it) and no traceback."""
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert not any("Traceback" in ln for ln in lines)
    if errors:
        assert errors == lines[-1:]
    return code, errors


@pytest.fixture(scope="module")
def x86_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("x86") / "art"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/compile.py"), "--model", MODEL, "--bits", "4",
         "--target", "x86", "--strategy", "exact", "--output", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "lowered to codebook kernels" in proc.stdout
    return out


@pytest.fixture(scope="module")
def arm_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("arm") / "art"
    assert compile_cli.main(["--model", MODEL, "--target", "arm", "--output", str(out),
                             "--quiet"]) == 0
    return out


def test_compile_and_run_x86_matches_torch(x86_artifact, tmp_path):
    manifest = json.loads((x86_artifact / "manifest.json").read_text())
    assert manifest["target"]["name"] == "x86" and manifest["entry"] == "main"
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert manifest["outputs"][0]["shape"] == [1, 10]
    lowered = [r for r in manifest["layers"] if r["lowered"]]
    assert len(lowered) == 19 and all(r["bits"] == 4 and r["kernel"] for r in lowered)
    assert all(0 < r["sparsity"] < 1 for r in lowered)
    built = zoo.build(MODEL, 4, seed=0)
    np.save(tmp_path / "x.npy", built.example_input.numpy())
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/run.py"), "--artifact", str(x86_artifact),
         "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        want = built.model(built.example_input).numpy()
    assert rel_err(np.load(tmp_path / "y.npy"), want) < 1e-4


def test_arm_artifact_is_an_aarch64_library(arm_artifact):
    lib = arm_artifact / "model.so"
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    manifest = json.loads((arm_artifact / "manifest.json").read_text())
    assert manifest["target"]["triple"].startswith("aarch64")
    nm = shutil.which("aarch64-linux-gnu-nm") or shutil.which("nm")
    syms = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True,
                          text=True, check=True).stdout
    assert "__tvm_ffi__library_bin" in syms  # the Relax VM executable
    for kernel in {r["kernel"] for r in manifest["layers"] if r["lowered"]}:
        assert f"__tvm_ffi_{kernel}" in syms


def test_run_arm_artifact_without_a_tracker(arm_artifact, tmp_path, capsys, monkeypatch):
    # No devices started here and the default tracker address unreachable.
    monkeypatch.setenv("DGMS_TVM_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("TVM_TRACKER_HOST", "127.0.0.1")
    monkeypatch.setenv("TVM_TRACKER_PORT", "1")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    code, err = _cli(run_cli.main, ["--artifact", str(arm_artifact), "--input",
                                    str(tmp_path / "x.npy"), "--output",
                                    str(tmp_path / "y.npy")], capsys)
    assert code == 2 and len(err) == 1 and "tracker 127.0.0.1:1 is unreachable" in err[0]
    assert "scripts/device.py start --cpu cortex-a72" in err[0]
    assert not (tmp_path / "y.npy").exists()


def test_run_bad_inputs(x86_artifact, tmp_path, capsys):
    args = ["--artifact", str(x86_artifact), "--output", str(tmp_path / "y.npy")]
    code, err = _cli(run_cli.main, [*args, "--input", str(tmp_path / "none.npy")], capsys)
    assert code == 2 and err == [f"error: input file {tmp_path / 'none.npy'} not found"]
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    code, err = _cli(run_cli.main, [*args, "--input", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and len(err) == 1 and "must be float32[1, 3, 32, 32]" in err[0]
    code, err = _cli(run_cli.main, ["--artifact", str(tmp_path), "--input",
                                    str(tmp_path / "x.npy"), "--output", "y.npy"], capsys)
    assert code == 2 and "not a dgms-tvm artifact" in err[0]


def _assert_clean(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("argv,message", [
    (["--model", "missing.onnx"], "model file missing.onnx not found"),
    (["--model", "nosuchmodel"], "neither a built-in model"),
    (["--target", "cortex-a999"], "unknown target 'cortex-a999'; known targets: x86, "),
    (["--bits", "5"], "unsupported bit width 5"),
])
def test_compile_bad_arguments(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _cli(compile_cli.main, ["--model", MODEL, *argv, "--output", str(out)], capsys)
    assert code == 2 and len(err) == 1 and message in err[0]
    _assert_clean(out)


@pytest.mark.parametrize("suffix,garbage", [(".onnx", b"\x08\x07garbage"),
                                            (".pt2", b"PK\x03\x04broken")])
def test_compile_corrupt_model_file(suffix, garbage, tmp_path, capsys):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(garbage)
    out = tmp_path / "out"
    code, err = _cli(compile_cli.main, ["--model", str(bad), "--target", "x86", "--output",
                                        str(out)], capsys)
    assert code == 2 and len(err) == 1 and f"{bad}: not a readable" in err[0]
    _assert_clean(out)


def test_compile_refuses_foreign_output_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, err = _cli(compile_cli.main, ["--model", MODEL, "--output", str(out)], capsys)
    assert code == 2 and "exists and is not a dgms-tvm artifact" in err[0]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_compile_forced_bits_below_the_models_codebooks(tmp_path, capsys):
    built = zoo.build(MODEL, 4, seed=0)
    ep = torch.export.export(built.model, (built.example_input,))
    path = tmp_path / "m.pt2"
    torch.export.save(ep, str(path), extra_files={frontend.METADATA_FILE: frontend.metadata_json(
        {k: cw.bits for k, cw in built.codebooks.items()})})
    out = tmp_path / "out"
    code, err = _cli(compile_cli.main, ["--model", str(path), "--bits", "2", "--target", "x86",
                                        "--output", str(out), "--quiet"], capsys)
    assert code == 2 and len(err) == 1
    assert "(declared 4-bit) is not a 2-bit codebook" in err[0]
    _assert_clean(out)


def test_compile_without_cross_compiler(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    out = tmp_path / "out"
    code, err = _cli(compile_cli.main, ["--model", MODEL, "--target", "cortex-a53",
                                        "--output", str(out)], capsys)
    assert code == 2 and len(err) == 1
    assert "aarch64-linux-gnu-g++ not found" in err[0] and "g++-aarch64-linux-gnu" in err[0]
    _assert_clean(out)


def test_recompile_replaces_own_artifact(x86_artifact, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(x86_artifact, out)
    (out / "model.so").write_bytes(b"stale")
    assert compile_cli.main(["--model", MODEL, "--target", "x86", "--output", str(out),
                             "--quiet", "--fp32"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["codebook_lowering"] is False
    assert not any(r["lowered"] for r in manifest["layers"])
    assert all(r["fp32_kernel"] for r in manifest["layers"])
    assert (out / "model.so").stat().st_size > 1000
    assert os.access(out, os.R_OK | os.X_OK)


def test_compile_strategy_is_recorded_per_layer(tmp_path, capsys):
    out = tmp_path / "int8"
    code, _ = _cli(compile_cli.main, ["--model", MODEL, "--target", "x86", "--strategy", "int8",
                                      "--output", str(out), "--quiet"], capsys)
    assert code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["strategy"]["requested"] == "int8" and m["strategy"]["resolved"] == "int8"
    strategies = {r["name"]: r["strategy"] for r in m["layers"] if r["lowered"]}
    assert "int8" in strategies.values()
    assert m["strategy"]["layers"]["int8"] == list(strategies.values()).count("int8")
    # the FP32 first conv runs the int8 kernel too, its weight quantized per channel
    stem = [r for r in m["layers"] if not r["lowered"] and r["strategy"] == "int8"]
    assert stem and all("_w8" in r["fp32_kernel"] for r in stem)
    assert m["strategy"]["layers"]["int8 per-channel"] == len(stem)
    # auto on x86: int8 where this host has AVX-512 VNNI, exact elsewhere
    code, _ = _cli(compile_cli.main, ["--model", MODEL, "--target", "x86", "--output",
                                      str(tmp_path / "auto"), "--quiet"], capsys)
    m = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    vnni = sdot.unsigned_input(get_profile("x86"))
    assert code == 0 and m["strategy"]["resolved"] == ("int8" if vnni else "exact")


def test_an_internal_error_says_what_happened(capsys):
    """A bug (any exception but a UserError) ends a CLI with its traceback and one last
    ``internal error:`` line that names it, exit code 1; a TVMScript error included, whose
    message TVM's own exception hook would drop."""
    from tvm.script import tirx as T

    from dgms_tvm.cli import one_line_errors

    @one_line_errors
    def broken(argv=None):
        @T.prim_func(private=True)
        def f(A: T.Buffer((4,), "float32")):
            A[0] = T.Broadcast(T.float32(1), 1)

    assert broken([]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("Traceback") and "lanes > 1" in "\n".join(lines)
    assert lines[-1].startswith("internal error (a dgms-tvm bug") and "DiagnosticError" in \
        lines[-1]

