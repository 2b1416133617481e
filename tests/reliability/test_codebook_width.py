"""Issue 16, section 1: codebook width and what is lowered."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dgms_tvm import compiler, frontend, pipeline
from dgms_tvm.detect import find_codebook
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bits", [1, 2, 3])
@pytest.mark.parametrize("channels", [16, 32, 64, 128, 256, 512])
def test_narrow_scaled_codebook_beats_plain_wide_one(bits, channels, rng):
    # A BN-folded layer: every channel a scaled copy of one 2**bits codebook, so the tensor
    # as a whole has up to (2**bits - 1) * channels + 1 distinct values; a plain 8-bit
    # codebook may hold them, but the scaled form at `bits` is the narrow one.
    cw = random_codebook_weight(rng, (channels, 8, 3, 3), bits, scaled=True)
    w = cw.dense()
    got = find_codebook(w)
    assert got.bits == bits and got.scale is not None
    assert np.abs(got.dense() - w).max() <= 2e-6 * np.abs(w).max()
    assert got.nbytes < w.nbytes


def test_layer_bigger_packed_than_fp32_is_not_lowered():
    # 10 x 16 random float32 weights: 160 distinct values, which a plain 8-bit codebook holds
    # in 160 + 1024 bytes, against 640 bytes in FP32.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 10)).eval()
    imported = frontend.from_torch(model, (torch.randn(1, 16),))
    (rec,) = compiler.lower(imported).records
    assert not rec.lowered and rec.fp32_kernel
    assert "1184 bytes" in rec.reason and "640 bytes" in rec.reason
    assert "not smaller" in rec.reason


def _quantize_main():
    spec = importlib.util.spec_from_file_location("quantize_cli", ROOT / "scripts/quantize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.parametrize("bits", [5, 6, 7, 9])
def test_quantize_rejects_width_without_layout(bits, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    code = _quantize_main()(["--bits", str(bits), "--fp32-epochs", "0", "--epochs", "0",
                             "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: --bits {bits}: the packed widths are 1, 2, 3, 4, 8")
    assert not out.exists()


def test_compile_says_it_widened_a_layer(rng, capsys):
    # What a 5-bit DGMS layer is: 31 non-zero values and the zero; stored at 8 bits.
    model = nn.Sequential(nn.Linear(64, 16, bias=False)).eval()
    values = np.concatenate([[0.0], rng.normal(size=31)]).astype(np.float32)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(values[rng.integers(0, 32, size=(16, 64))]))
    loaded = pipeline.LoadedModel(frontend.from_torch(model, (torch.randn(1, 64),)), "tiny")
    build = pipeline.build_model(loaded, get_profile("x86"), None, fp32=False)
    (rec,) = build.lowered.records
    assert rec.lowered and rec.bits == 8
    assert rec.widened == "its 32 codebook entries need 5 bits, packed at 8"
    err = capsys.readouterr().err
    assert "warning: 1 codebook layer(s) packed wider than their values need: 0.weight its 32" \
        in err
