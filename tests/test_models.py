"""Whole built-in models (the small 32x32 variants), lowered and built for this host, equal
to PyTorch within 1e-4 relative: imported through torch.export, through a saved .pt2 with
DGMS metadata, and through ONNX with BatchNorm folded (per-channel scaled codebooks)."""

import numpy as np
import pytest
import torch

from dgms_tvm import compiler, frontend, zoo
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err

MODELS = ["resnet18-32", "mobilenetv2-32"]


@pytest.fixture(scope="module", params=MODELS)
def built(request):
    b = zoo.build(request.param, bits=4, seed=0)
    with torch.no_grad():
        b.want = b.model(b.example_input).numpy()
    return b


def _run(imported, x, bits=4):
    lowered = compiler.lower(imported, bits)
    out = compiler.run_local(compiler.build(lowered, get_profile("x86")), [x])[0]
    return lowered, out


def test_zoo_is_deterministic_and_dgms_shaped():
    a, b = zoo.build("resnet18-32", 4, seed=3), zoo.build("resnet18-32", 4, seed=3)
    assert a.codebooks.keys() == b.codebooks.keys()
    for k in a.codebooks:
        np.testing.assert_array_equal(a.codebooks[k].packed, b.codebooks[k].packed)
    assert "conv1.weight" not in a.codebooks and "fc.weight" not in a.codebooks
    assert len(a.codebooks) == 19  # every other conv
    c = zoo.build("resnet18-32", 4, seed=4)
    assert not np.array_equal(c.codebooks["layer1.0.conv1.weight"].packed,
                              a.codebooks["layer1.0.conv1.weight"].packed)


def test_torch_export_path(built):
    declared = {k: cw.bits for k, cw in built.codebooks.items()}
    imported = frontend.from_torch(built.model, (built.example_input,), declared)
    lowered, got = _run(imported, built.example_input.numpy())
    assert {r.name for r in lowered.records if r.lowered} == set(built.codebooks)
    assert rel_err(got, built.want) < 1e-4


def test_saved_pt2_with_metadata(built, tmp_path):
    ep = torch.export.export(built.model, (built.example_input,))
    path = tmp_path / "model.pt2"
    meta = frontend.metadata_json({k: cw.bits for k, cw in built.codebooks.items()})
    torch.export.save(ep, str(path), extra_files={frontend.METADATA_FILE: meta})
    imported = frontend.load_pt2(path)
    assert imported.declared and set(imported.declared) == set(built.codebooks)
    lowered, got = _run(imported, built.example_input.numpy())
    assert sum(r.lowered for r in lowered.records) == len(built.codebooks)
    assert rel_err(got, built.want) < 1e-4


def test_onnx_path_with_folded_batchnorm(built, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(frontend.onnx_bytes(built.model, (built.example_input,)))
    imported = frontend.load_onnx(path)
    lowered, got = _run(imported, built.example_input.numpy())
    lowered_recs = [r for r in lowered.records if r.lowered]
    # BatchNorm folding makes every quantized conv a per-channel scaled codebook.
    assert len(lowered_recs) == len(built.codebooks)
    assert all(r.scaled for r in lowered_recs)
    assert rel_err(got, built.want) < 1e-4
