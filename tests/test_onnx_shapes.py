"""An ONNX model's shape arithmetic folded to constants once its input shape is fixed
(dgms_tvm/onnx_shapes.py): what the legacy exporter writes for ``x.size()`` and
``x.chunk()``, which TVM's importer cannot legalize."""

import numpy as np
import onnx
import onnxruntime as ort
import torch

from dgms_tvm import frontend, onnx_shapes


class Split(torch.nn.Module):
    """ShuffleNetV2's channel split and shuffle, and a flatten by the running shape."""

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        n, c, h, w = x.size()
        y = torch.cat((a, b * 2), 1).view(n, 2, c // 2, h, w).transpose(1, 2)
        return y.reshape(n, -1)[:, : x.shape[2] * 3]


def _run(blob: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_shape_arithmetic_becomes_constants_and_the_model_computes_the_same():
    x = torch.randn(1, 6, 4, 5)
    model = onnx.load_from_string(frontend.onnx_bytes(Split(), (x,)))
    ops = [n.op_type for n in model.graph.node]
    assert "Shape" in ops and "Slice" in ops
    folded = onnx_shapes.fold(model, {"input": [1, 6, 4, 5]})
    kept = [n.op_type for n in folded.graph.node if n.op_type != "Constant"]
    assert "Shape" not in kept and "Gather" not in kept and "Div" not in kept
    assert {"Slice", "Concat", "Transpose", "Reshape"} <= set(kept)  # the data's own ops
    np.testing.assert_array_equal(_run(folded.SerializeToString(), x.numpy()),
                                  _run(model.SerializeToString(), x.numpy()))


def test_the_folded_model_imports_with_static_shapes(tmp_path):
    x = torch.randn(1, 6, 4, 5)
    path = tmp_path / "split.onnx"
    path.write_bytes(frontend.onnx_bytes(Split(), (x,)))
    imported = frontend.load_onnx(path)
    ret = imported.mod["main"].ret_ty
    assert [int(v) for v in ret.shape] == [1, 12]


def test_a_model_shape_inference_cannot_read_is_returned_unchanged():
    node = onnx.helper.make_node("Frobnicate", ["x"], ["y"], domain="example")
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = onnx.helper.make_model(graph)
    assert onnx_shapes.fold(model, {"x": [2]}).graph.node[0].op_type == "Frobnicate"
