"""Integration: a brief DGMS fine-tune on the digits data, exported, compiled for this host,
and equal to PyTorch; and scripts/quantize.py writing files that scripts/compile.py takes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dgms_tvm import compiler, frontend
from dgms_tvm.quant import recipe
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finetuned():
    name, entry = recipe.digits_model("digitnet")
    data = recipe.load_data("digits", entry)
    fp32 = recipe.pretrain(name, data, epochs=3, quiet=True)
    return data, recipe.quantize(fp32, data, bits=4, epochs=1, quiet=True)


def test_four_bit_digits_model_is_far_above_chance(finetuned):
    _, res = finetuned
    assert res.accuracy > 0.8  # chance is 0.1
    assert 0 < res.exported.sparsity < 1
    assert res.logs[-1].sparsity == pytest.approx(res.exported.sparsity, abs=1e-9)


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_export_compiles_and_matches_pytorch(finetuned, fmt, tmp_path):
    data, res = finetuned
    x = data.x_test[:1]
    path = tmp_path / f"m.{fmt}"
    (res.exported.save_pt2 if fmt == "pt2" else res.exported.save_onnx)(path, x)
    imported = (frontend.load_pt2 if fmt == "pt2" else frontend.load_onnx)(path)
    assert imported.declared == res.exported.metadata()
    lowered = compiler.lower(imported)
    assert {r.name for r in lowered.records if r.lowered} == set(res.exported.layers)
    got = compiler.run_local(compiler.build(lowered, get_profile("x86")), [x.numpy()])[0]
    with torch.no_grad():
        want = res.exported.model(x).numpy()
    assert rel_err(got, want) < 1e-4


def test_quantize_cli_output_is_accepted_by_compile(tmp_path):
    out = tmp_path / "digits.onnx"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/quantize.py"), "--model", "digitnet", "--bits", "2",
         "--epochs", "1", "--fp32-epochs", "2", "--output", str(out), "--onnx"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "DGMS 2-bit" in proc.stdout and "sparsity" in proc.stdout
    assert "epoch 1/1" in proc.stderr  # per-epoch accuracy and sparsity are shown
    art = tmp_path / "art"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/compile.py"), "--model", str(out), "--target",
         "x86", "--output", str(art)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "3 of 5 conv2d/dense layers lowered" in proc.stdout


def test_quantize_cli_bad_bits(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/quantize.py"), "--bits", "9", "--fp32-epochs",
         "0", "--epochs", "0", "--output", str(tmp_path / "m.pt2")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    want = "error: --bits 9: the packed widths are 1, 2, 3, 4, 8"
    assert proc.stderr.strip().splitlines()[-1] == want
    assert not (tmp_path / "m.pt2").exists()
    assert np.all([not p.name.startswith(".") for p in tmp_path.iterdir()])
