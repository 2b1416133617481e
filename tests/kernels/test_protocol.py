"""The kernel protocol: every registered family is complete, its spec's JSON reads back to the
same spec (and is the text tuning records were keyed by), and the quantize and decode
kernels match their NumPy oracles."""

import dataclasses
import json

import numpy as np
import pytest
import tvm

from dgms_tvm import kernels
from dgms_tvm.kernels import gemv
from dgms_tvm.kernels.common import KERNEL_ATTR, standalone
from dgms_tvm.kernels.epilogue import Epilogue
from dgms_tvm.kernels.fp32 import conv2d, dense, depthwise
from dgms_tvm.kernels.int8 import depthwise as int8_dw
from dgms_tvm.kernels.int8 import gathered, lut, widening
from dgms_tvm.kernels.int8.operands import decode, quantize, weights
from dgms_tvm.targets import get_profile
from tests.helpers import random_codebook_weight, run_kernel

C = conv2d.Conv2dSpec
SPECS = [
    C(1, 16, 10, 10, 32, (3, 3), (2, 1), (1, 0, 2, 1), (2, 1), bits=3, scaled=True),
    dense.DenseSpec(4, 24, 40, 2),
    depthwise.DepthwiseSpec(C(1, 8, 9, 9, 8, (3, 3), padding=(1, 1, 1, 1), groups=8),
                            act="relu6", lanes=8, rows=4),
    gemv.GemvSpec(1, 64, 128, 4, arith="lut", rows=32, form="tbl"),
    widening.LongSpec(C(1, 32, 8, 8, 16, (3, 3), padding=(1, 1, 1, 1)),
                      Epilogue(True, True, "relu"), sadalp=True, limit=127),
    quantize.QuantSpec(1, 6, 9, 11, (1, 0, 2, 1), extra=3, phases=2, offset=128),
    decode.DecodeSpec(16, 6, (3, 3), 2, depth=16),
    int8_dw.Int8DwSpec(C(1, 16, 9, 9, 16, (3, 3), (2, 2), (1, 1, 1, 1), groups=16),
                       act="relu", depth=16,
                       out=quantize.QuantSpec(1, 16, 5, 5, (1, 1, 1, 1), depth=16)),
    gathered.Im2colSpec(C(1, 3, 16, 16, 8, (7, 7), (2, 2), (3, 3, 3, 3), bits=2)),
    lut.LutSpec(C(1, 32, 9, 9, 16, (3, 3), padding=(1, 1, 1, 1), bits=1),
                Epilogue(True, False, "relu6"), blocks=2, neon=True,
                out=quantize.QuantSpec(1, 16, 9, 9, depth=16)),
]


def test_every_family_is_registered_under_its_attribute():
    assert len(kernels.FAMILIES) == 13
    for name, fam in kernels.FAMILIES.items():
        assert fam.family == name and issubclass(fam.spec, kernels.Spec)
        assert callable(fam.compute) and callable(fam.schedule) and callable(fam.reference)
        assert not fam.searchable or fam.apply is not None


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
def test_spec_json_reads_back_and_keeps_its_text(spec):
    text = spec.to_json()
    assert text == json.dumps(dataclasses.asdict(spec))  # the text tuning records hash
    assert type(spec).from_json(text) == spec


def test_a_kernel_names_its_family_and_spec():
    spec = SPECS[0]
    func = conv2d.compute(spec)
    assert str(func.attrs[KERNEL_ATTR]) == conv2d.FAMILY
    assert C.from_func(func) == spec


QUANT = [quantize.QuantSpec(1, 6, 9, 11, (1, 0, 2, 1)),
         quantize.QuantSpec.of(C(1, 16, 9, 11, 24, (3, 3), (2, 2), (1, 1, 1, 1))),
         quantize.QuantSpec.of(C(2, 8, 7, 7, 8, (3, 3), padding=(1, 1, 1, 1)),
                               unsigned=True),
         quantize.QuantSpec.of(C(1, 20, 6, 6, 16, (1, 1)), depth=16)]


@pytest.mark.parametrize("qs", QUANT, ids=lambda q: q.name)
@pytest.mark.parametrize("vector", [True, False])
def test_quantize_kernel_matches_its_oracle(qs, vector, rng):
    x = rng.normal(size=(qs.batch, qs.channels, qs.height, qs.width)).astype(np.float32)
    x[0, 0, 0, 0] = 40.0  # an extreme value sets the scale
    lib = tvm.compile(standalone(quantize.schedule(quantize.compute(qs, vector), {})),
                      target=get_profile("x86").tvm_target())
    xq = tvm.runtime.tensor(np.zeros(qs.out_shape, qs.dtype))
    sx = tvm.runtime.tensor(np.zeros(1, np.float32))
    lib["main"](tvm.runtime.tensor(x), xq, sx)
    want, want_sx = quantize.reference(qs, x)
    np.testing.assert_array_equal(xq.numpy(), want)
    assert sx.numpy()[0] == want_sx


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("depth", [4, 16])
def test_decode_kernel_matches_its_oracle(bits, depth, rng):
    ds = decode.DecodeSpec(16, 24, (3, 3), bits, depth)
    assert ds.supported()
    cw = random_codebook_weight(rng, (16, 24, 3, 3), bits)
    q, _ = weights.quantize_codebook(cw.codebook, cw.scale, 16)
    q[-1] = -127  # the extreme entry
    got = run_kernel(decode.compute(ds), [decode.pack_for_decode(ds, cw.indices()),
                                          weights.q16(q), np.zeros(1, np.float32),
                                          np.zeros(ds.shape, np.int8)])
    np.testing.assert_array_equal(got, decode.reference(ds, cw.indices(), q))
