"""Issue 16, section 4: interrupts, damaged files and unwritable outputs end a CLI with one
line and leave nothing half-written.

Signals are sent to CLI subprocesses only, never to the pytest process: the handlers are
the scripts' (``cli.run_script``), and a KeyboardInterrupt in pytest itself ends the session.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dgms_tvm import pipeline

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _signal_at(argv, phase: str, sig: int, delay: float, timeout: float = 900):
    """Run a script, send it ``sig`` ``delay`` seconds after its stderr prints ``phase``;
    its exit code and stderr lines."""
    proc = subprocess.Popen([sys.executable, "-u", *argv], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if phase in line:
                seen.set()
        seen.set()  # the process ended before the phase: the assertion below says so

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(timeout), f"no {phase!r} within {timeout} s"
        assert proc.poll() is None, "ended before the signal:\n" + "\n".join(lines)
        time.sleep(delay)
        proc.send_signal(sig)
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    return code, lines


def _assert_interrupted(code, lines, out: Path):
    assert code == 130, "\n".join(lines)
    assert lines[-1] == "interrupted" and not any("Traceback" in ln for ln in lines)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.slow
@pytest.mark.parametrize("sig,model,phase", [
    (signal.SIGINT, "resnet18-32", "[2/4] lowering"),
    (signal.SIGTERM, "digitnet", "[3/4] building"),
])
def test_compile_interrupted_in_tvm(sig, model, phase, tmp_path):
    # A second into lowering the process is inside TVM, in C++ that calls back into the
    # lowering pass. The KeyboardInterrupt raised there came out of the old code as an empty
    # RuntimeError (a traceback, "internal error", exit 1) or was dropped by TVM altogether
    # (the build went on and wrote the artifact, exit 0): the SIGINT case fails on it. Now the
    # signal is remembered and the CLI says "interrupted", exit 130, nothing written. The
    # SIGTERM in the build (mostly C++ and the compiler subprocess) is the guard that a
    # signal outside a Python callback, which the old code did handle, still ends it so.
    out = tmp_path / "art"
    code, lines = _signal_at(["scripts/compile.py", "--model", model, "--target", "x86",
                              "--tuning-logs", "none", "--output", str(out)], phase, sig, 1.0)
    _assert_interrupted(code, lines, out)


def test_sigterm_runs_the_scripts_cleanup(tmp_path):
    """SIGTERM (kill, a CI timeout) ends a script as Ctrl-C does: its finally blocks run
    (they stop the emulated devices it started), ``interrupted``, exit 130."""
    script = tmp_path / "sleeper.py"
    script.write_text(
        "import sys, time\n"
        "from dgms_tvm.cli import one_line_errors, run_script\n"
        "@one_line_errors\n"
        "def main(argv=None):\n"
        "    try:\n"
        "        print('[1/1] sleeping', file=sys.stderr, flush=True)\n"
        "        time.sleep(120)\n"
        "    finally:\n"
        "        print('cleaned up', file=sys.stderr, flush=True)\n"
        "sys.exit(run_script(main))\n")
    t0 = time.monotonic()
    code, lines = _signal_at([str(script)], "[1/1] sleeping", signal.SIGTERM, 0.2, 60)
    assert code == 130 and lines[-2:] == ["cleaned up", "interrupted"]
    assert time.monotonic() - t0 < 60


def test_library_installs_no_signal_handler(tmp_path, capsys):
    """Only a script's entry point handles signals: the library used from Python (and a CLI's
    ``main`` called by a test) leaves Ctrl-C to raise KeyboardInterrupt as usual."""
    from dgms_tvm import interrupt, pipeline  # noqa: F401  (importing installs nothing)

    sys.path.insert(0, str(ROOT / "scripts"))
    import compile as compile_cli

    before = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    assert compile_cli.main(["--target", "cortex-a999", "--output", str(tmp_path)]) == 2
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert interrupt.received() is None
    interrupt.check()  # nothing received: no-op


# --- damaged artifacts ------------------------------------------------------------------

def _main_of(script: str):
    spec = importlib.util.spec_from_file_location(f"{script}_cli", ROOT / "scripts" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _one_error(code, capsys_or_err) -> str:
    """The single ``error:`` line a failed CLI printed (nothing else: no traceback)."""
    err = capsys_or_err if isinstance(capsys_or_err, str) else capsys_or_err.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def digits_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "art"
    pipeline.compile_model("digitnet", "x86", out, quiet=True, tuning_logs=None,
                           strategy="exact")
    np.save(out.parent / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    return out


def _damage(folder: Path, how: str) -> None:
    lib, manifest = folder / "model.so", folder / "manifest.json"
    if how == "random bytes":
        lib.write_bytes(np.random.default_rng(0).bytes(lib.stat().st_size))
    elif how == "no model.so":
        lib.unlink()
    elif how == "manifest a list":
        manifest.write_text("[1, 2]")
    elif how == "manifest without inputs":
        doc = json.loads(manifest.read_text())
        del doc["inputs"]
        manifest.write_text(json.dumps(doc))


@pytest.mark.parametrize("how,message", [
    ("random bytes", "model.so is damaged: its sha256 is not the manifest's"),
    ("no model.so", "model.so is missing"),
    ("manifest a list", "not a dgms-tvm artifact manifest"),
    ("manifest without inputs", "damaged or too old a manifest: no inputs"),
])
def test_run_damaged_artifact(digits_artifact, how, message, tmp_path, capsys):
    # Old code: a traceback and "internal error" for each (the loader's, a KeyError, ...).
    art = tmp_path / "art"
    shutil.copytree(digits_artifact, art)
    _damage(art, how)
    code = _main_of("run.py")(["--artifact", str(art), "--input",
                               str(digits_artifact.parent / "x.npy"), "--output",
                               str(tmp_path / "y.npy")])
    assert message in _one_error(code, capsys)
    assert not (tmp_path / "y.npy").exists()


def test_run_truncated_library(digits_artifact, tmp_path):
    # A subprocess: the old code loaded the truncated library and died of SIGBUS (exit 135,
    # no message), which in-process would have killed pytest.
    art = tmp_path / "art"
    shutil.copytree(digits_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    size = (art / "model.so").stat().st_size
    assert manifest["library_bytes"] == size and len(manifest["library_sha256"]) == 64
    os.truncate(art / "model.so", 20000)
    proc = subprocess.run([sys.executable, "scripts/run.py", "--artifact", str(art), "--input",
                           str(digits_artifact.parent / "x.npy"), "--output",
                           str(tmp_path / "y.npy")], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    line = _one_error(proc.returncode, proc.stderr)
    assert f"model.so is damaged: 20000 bytes, the manifest says {size}" in line


# --- run.py's --input and --output --------------------------------------------------------

def test_run_input_and_output_names(digits_artifact, tmp_path, capsys):
    run = _main_of("run.py")
    x = str(digits_artifact.parent / "x.npy")
    base = ["--artifact", str(digits_artifact)]
    for name in ("x.txt", "x.onnx"):  # old code: "... pickled (object) data ..."
        (tmp_path / name).write_text("1 2 3\n")
        code = run([*base, "--input", str(tmp_path / name), "--output", str(tmp_path / "y.npy")])
        assert "expected a .npy file, or .npz for several inputs" in _one_error(code, capsys)
    (tmp_path / "text.npy").write_text("1 2 3\n")
    code = run([*base, "--input", str(tmp_path / "text.npy"), "--output", str(tmp_path / "y.npy")])
    assert "text.npy: not a NumPy .npy file" in _one_error(code, capsys)
    # old code: wrote y.txt.npy and said "wrote y.txt"
    code = run([*base, "--input", x, "--output", str(tmp_path / "y.txt")])
    assert "must end in .npy (the first output) or .npz" in _one_error(code, capsys)
    assert not list(tmp_path.glob("y.txt*"))
    # old code: a FileNotFoundError traceback
    out = tmp_path / "new" / "folder" / "y.npy"
    assert run([*base, "--input", x, "--output", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: float32[1, 10]")
    assert np.load(out).shape == (1, 10) and sorted(p.name for p in out.parent.iterdir()) == \
        ["y.npy"]


# --- read-only and full output locations -------------------------------------------------

def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    with tempfile.TemporaryDirectory() as where:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", where],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", where], check=True)
    return ok


#: A read-only or a full file system is a tmpfs of our own: root with mount rights.
NEEDS_MOUNT = pytest.mark.skipif(not _can_mount(), reason="needs root allowed to mount a tmpfs")


@contextlib.contextmanager
def _tmpfs(where: Path, options: str):
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


@NEEDS_MOUNT
def test_compile_to_unwritable_location_fails_before_the_build(tmp_path, capsys):
    # Old code: the whole build, then an OSError traceback (read-only) or a linker message
    # that hid "No space left on device" (full), exit 1.
    compile_main = _main_of("compile.py")
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        code = compile_main(["--model", "digitnet", "--target", "x86", "--output",
                             str(ro / "art")])
        assert _one_error(code, capsys).endswith("read-only file system")  # no [1/4] line
    with _tmpfs(tmp_path / "full", "size=64k") as full:
        _fill(full)
        code = compile_main(["--model", "digitnet", "--target", "x86", "--output",
                             str(full / "sub" / "art")])
        assert "error: no space left on device writing artifact" in _one_error(code, capsys)


@NEEDS_MOUNT
def test_compile_disk_full_while_writing(tmp_path, capsys):
    # Room for the probe, not for the library: the linker fails; one line says why.
    with _tmpfs(tmp_path / "small", "size=128k") as small:
        code = _main_of("compile.py")(["--model", "digitnet", "--target", "x86", "--output",
                                       str(small / "art"), "--tuning-logs", "none", "--quiet"])
        assert "no space left on device writing artifact" in _one_error(code, capsys)
        assert list(small.iterdir()) == []


# --- quantize.py's --output ----------------------------------------------------------------

def test_quantize_output_checked_before_training(tmp_path, capsys):
    quantize = _main_of("quantize.py")
    fast = ["--fp32-epochs", "0", "--epochs", "0"]
    (tmp_path / "old.pt2").write_bytes(b"keep me")
    code = quantize([*fast, "--output", str(tmp_path / "old.pt2")])  # old: overwritten
    assert "old.pt2 exists; remove it or pass --force" in _one_error(code, capsys)
    assert (tmp_path / "old.pt2").read_bytes() == b"keep me"
    code = quantize([*fast, "--output", str(tmp_path)])  # old: failed after the training
    assert "is a folder" in _one_error(code, capsys)
    code = quantize([*fast, "--output", str(tmp_path / "m.pt2"), "--onnx"])
    assert "a .pt2 name but --onnx asks for ONNX" in _one_error(code, capsys)
    code = quantize([*fast, "--output", str(tmp_path / "m.txt")])
    assert "must end in .pt2 (torch.export) or .onnx" in _one_error(code, capsys)


def test_quantize_format_follows_the_extension(tmp_path, capsys):
    # Old code: --output m.onnx without --onnx wrote a .pt2 zip under that name.
    import onnx

    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx").write_bytes(b"stale")
    assert _main_of("quantize.py")(["--fp32-epochs", "0", "--epochs", "0", "--force",
                                    "--output", str(out)]) == 0
    assert not zipfile.is_zipfile(out) and onnx.load(str(out)).graph.node
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- compile's model files -----------------------------------------------------------------

def _digits_onnx(path: Path, dynamic_batch: bool) -> None:
    import torch

    from dgms_tvm import zoo

    built = zoo.build("digitnet", 4, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(built.model.eval(), (built.example_input,), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}} if dynamic_batch else None)


def test_compile_onnx_named_pt2_is_one_line(tmp_path, capfd):
    # Old code: the error line came after torch's 12-line warning traceback (through logging,
    # hence capfd).
    bad = tmp_path / "model.pt2"
    _digits_onnx(bad, dynamic_batch=False)
    capfd.readouterr()
    code = _main_of("compile.py")(["--model", str(bad), "--target", "x86", "--output",
                                   str(tmp_path / "art"), "--quiet"])
    line = _one_error(code, capfd.readouterr().err)
    assert "not a readable torch.export program" in line and "name it .onnx" in line


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_compile_dynamic_batch_is_said(suffix, tmp_path, capsys):
    # Old code: an ONNX batch dimension was fixed to 1 without a word; a .pt2 one was an
    # internal error (int() of a symbolic dimension).
    import torch

    from dgms_tvm import zoo

    model = tmp_path / f"dyn{suffix}"
    if suffix == ".onnx":
        _digits_onnx(model, dynamic_batch=True)
        name, dim = "input", "batch"
    else:
        built = zoo.build("digitnet", 4, seed=0)
        batch = torch.export.Dim("batch")
        ep = torch.export.export(built.model.eval(), (torch.zeros(2, 1, 8, 8),),
                                 dynamic_shapes=({0: batch},))
        torch.export.save(ep, str(model))
        name, dim = "x", None  # the symbol is named by torch (s77): not compared
    out = tmp_path / "art"
    assert _main_of("compile.py")(["--model", str(model), "--target", "x86", "--output",
                                   str(out), "--quiet", "--tuning-logs", "none"]) == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: input '{name}' has dynamic dimension(s) ")
    assert line.endswith(": compiled for shape [1, 1, 8, 8] only (each fixed to 1)")
    if suffix == ".onnx":
        assert f"dimension(s) {dim}:" in line
    assert json.loads((out / "manifest.json").read_text())["inputs"][0]["shape"] == [1, 1, 8, 8]
