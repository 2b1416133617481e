"""An ONNX model's shape arithmetic folded to constants once its input shapes are fixed.

PyTorch's legacy exporter writes ``x.size()`` and ``x.chunk(2, 1)`` as ``Shape -> Gather ->
Div -> Mul -> Slice`` on the running tensor (ShuffleNetV2's channel split, a detection
head's flatten), and TVM's importer turns a ``Slice`` or ``Reshape`` whose bounds are
computed at run time into a tensor of unknown shape, which its legalization cannot build.
With the inputs' shapes fixed (batch 1, as the importer fixes them) every such value is a
constant: ``Shape`` of a tensor whose shape inference knows it, then any small op over
constants, evaluated here by ONNX's reference implementation. Each folded node becomes a
``Constant`` node of its value; nothing else changes.
"""

from __future__ import annotations

import numpy as np

#: Ops cheap to evaluate once over small constants (shape and index arithmetic).
FOLDABLE = frozenset({
    "Abs", "Add", "Cast", "Ceil", "Concat", "ConstantOfShape", "Div", "Equal", "Expand",
    "Floor", "Gather", "Greater", "Identity", "Less", "Max", "Min", "Mod", "Mul", "Neg", "Not",
    "Range", "ReduceProd", "Reshape", "Shape", "Size", "Slice", "Sqrt", "Squeeze", "Sub",
    "Unsqueeze", "Where"})
#: Elements a value may have to be folded (shape vectors and scalars, not weights).
SMALL = 4096


def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    """Each value's shape where shape inference fixed every dimension."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph
    out = {}
    for vi in (*g.input, *g.value_info, *g.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _run(node, values: list, opsets) -> list[np.ndarray]:
    """``node`` evaluated on ``values`` (its inputs' arrays, None for an omitted one)."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [n for n in node.input if n]
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
              for n in names]
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
               for n in node.output]
    model = helper.make_model(helper.make_graph([node], "fold", inputs, outputs),
                              opset_imports=opsets)
    feed = {n: v for n, v in zip(node.input, values, strict=True) if n}
    return ReferenceEvaluator(model).run(None, feed)


def fold(model, input_shapes: dict[str, list[int]]):
    """A copy of ``model`` with its inputs' shapes fixed to ``input_shapes`` and every value
    computable from shapes and small constants made a ``Constant`` node (see the module's
    text)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[inp.name], strict=True):
                d.Clear()
                d.dim_value = int(v)
    try:
        shapes = _static_shapes(m)
    except Exception:  # (an op shape inference does not know: nothing is folded)
        return m
    known = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer
             if int(np.prod(t.dims)) <= SMALL}
    nodes = []
    for node in m.graph.node:
        value = None
        if node.op_type == "Constant":
            value = [numpy_helper.to_array(node.attribute[0].t)] if (
                node.attribute and node.attribute[0].name == "value") else None
        elif node.op_type == "Shape" and node.input[0] in shapes:
            attrs = {a.name: a.i for a in node.attribute}
            shape = shapes[node.input[0]]
            value = [np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))],
                              np.int64)]
        elif node.op_type in FOLDABLE and all(not n or n in known for n in node.input):
            try:
                value = _run(node, [known.get(n) for n in node.input], m.opset_import)
            except Exception:  # (the reference cannot evaluate it: keep the node)
                value = None
        if value is None or any(np.asarray(v).size > SMALL for v in value):
            nodes.append(node)
            continue
        for name, v in zip(node.output, value, strict=True):
            known[name] = np.asarray(v)
        if node.op_type == "Constant":
            nodes.append(node)
            continue
        nodes += [helper.make_node("Constant", [], [name], name=f"{node.name or name}_folded",
                                   value=numpy_helper.from_array(np.asarray(v), name))
                  for name, v in zip(node.output, value, strict=True)]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m
