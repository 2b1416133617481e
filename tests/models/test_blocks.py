"""The blocks of the models users bring (tests/models/blocks.py), exported to ONNX as a user
exports a torchvision model: on this host the exact build equals onnxruntime FP32 and the
int8 build stays near it; for cortex-a72, neoverse-n1 and neoverse-n2 every build is lowered
and scheduled (a layer no kernel takes stays FP32, its reason in the record), and each
block's codebook layers reach the kernels the block should get. Their aarch64 code runs on
the emulated cores in tests/device/test_emulated.py."""

import onnxruntime as ort
import pytest

from dgms_tvm import compiler, frontend, strategies
from dgms_tvm.targets import get_profile
from tests.helpers import rel_err
from tests.models.blocks import BLOCKS, user_onnx

ARM = ("cortex-a72", "neoverse-n1", "neoverse-n2")


@pytest.fixture(scope="module", params=sorted(BLOCKS))
def block(request, tmp_path_factory):
    """(name, imported model, input, onnxruntime FP32's output) of each block."""
    blob, x = user_onnx(request.param)
    path = tmp_path_factory.mktemp("blocks") / f"{request.param}.onnx"
    path.write_bytes(blob)
    x = x.numpy()
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return request.param, frontend.load_onnx(path), x, ref


def _run(imported, strategy, x):
    profile = get_profile("x86")
    lowered = compiler.lower(imported, None, strategy=strategy, profile=profile)
    return lowered, compiler.run_local(compiler.build(lowered, profile), [x])[0]


def test_exact_equals_onnxruntime_and_int8_stays_near_it(block):
    name, imported, x, ref = block
    lowered, exact = _run(imported, "exact", x)
    assert rel_err(exact, ref) < 1e-5, name
    assert [r for r in lowered.records if r.lowered], name  # its codebooks were found
    _, int8 = _run(imported, "int8", x)
    assert rel_err(int8, exact) < 0.05, name


#: Per block: weight shapes (a folded BatchNorm renames a conv, its shape stays) and the
#: kernel family each must reach in each core's int8 build (None: it stays exact there).
KERNELS = {
    # (20 input channels: the widening conv would pad them to 32, so exact on cortex-a72)
    "mobilenetv3": {(18, 72, 1, 1): "cb_gemv", (72, 20, 1, 1): (None, "q8_conv2d",
                                                                  "q8m_conv2d")},
    "efficientnet": {(4, 96, 1, 1): "cb_gemv", (96, 1, 5, 5): "q8_dw_conv2d"},
    # ResNeXt's groups of 4: sdot on neoverse-n1 and -n2 (smmla would pad them to 8); the
    # widening conv reads 16 at a time, so they stay exact on cortex-a72. Groups of 8: smmla.
    "grouped": {(128, 4, 3, 3): (None, "q8_conv2d", "q8_conv2d"),
                (48, 8, 3, 3): (None, "q8_conv2d", "q8m_conv2d")},
    # 58 output channels, computed as 60 (zero weights): the int8 convs write whole blocks;
    # the widening conv would pad the 58 input channels to 64, so exact on cortex-a72
    "shuffle": {(58, 58, 1, 1): (None, "q8_conv2d", "q8m_conv2d")},
    "convnext": {(160, 40): ("q8l_conv2d", "q8_conv2d", "q8m_conv2d")},
    "vit": {(48, 48): ("q8l_conv2d", "q8_conv2d", "q8m_conv2d")},
}


@pytest.mark.parametrize("target", ARM)
def test_every_aarch64_build_is_lowered_and_scheduled(block, target):
    name, imported, _, _ = block
    profile = get_profile(target)
    lowered = compiler.lower(imported, None, strategy=strategies.resolve("auto", profile),
                             profile=profile)
    compiler.prepare(lowered, profile)  # (every kernel's hand schedule applied)
    for r in lowered.records:
        assert not r.error, (name, r)
        assert r.kernel or r.fp32_kernel or r.reason, (name, r)
    by_shape = {}
    for r in lowered.records:
        by_shape.setdefault(tuple(r.shape), []).append(r)
    for shape, family in KERNELS.get(name, {}).items():
        family = family[ARM.index(target)] if isinstance(family, tuple) else family
        for r in by_shape[shape]:
            if family is None:
                assert r.strategy == "exact" and r.reason.startswith("exact: "), (name, r)
            else:
                assert (r.kernel or "").startswith(family), (name, target, r)
