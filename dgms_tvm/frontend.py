"""Import a model into Relax: torch (``torch.export``) or ONNX, weights kept by name.

Weights are imported as function parameters (not folded into the IR) so that the codebook
lowering can name each layer and read DGMS metadata keyed by weight name; the compiler binds
what is left as constants afterwards.

DGMS metadata (written by the DGMS exporter, optional) is a JSON object::

    {"format": "dgms-tvm/1", "layers": {"layer1.0.conv1.weight": {"bits": 4}, ...}}

stored as the extra file ``dgms.json`` of a ``torch.export`` archive (``.pt2``) or as the
ONNX ``metadata_props`` entry ``dgms``. Layers it names must be codebooks of that width.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import warnings
import zipfile
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from . import onnx_shapes
from .errors import UserError
from .passes.onnx_clip import onnx_clips

METADATA_KEY = "dgms"
METADATA_FILE = "dgms.json"
METADATA_FORMAT = "dgms-tvm/1"


@dataclasses.dataclass
class ImportedModel:
    """A Relax module whose ``main`` takes the model inputs, then the weights.

    Attributes
    ----------
    mod : tvm.IRModule
    weights : dict
        Relax parameter name -> value, for every parameter after the model inputs.
    names : dict
        Relax parameter name -> the weight's name in the source model.
    declared : dict
        Weight name -> bits, from DGMS metadata.
    inputs : list of (name, shape, dtype)
    source : str
        What it was imported from (for the manifest).
    notes : list of str
        What the import changed that the user should hear of (a dynamic dimension fixed).
    """

    mod: tvm.IRModule
    weights: dict[str, np.ndarray]
    names: dict[str, str]
    declared: dict[str, int]
    inputs: list[tuple[str, tuple[int, ...], str]]
    source: str
    notes: list[str] = dataclasses.field(default_factory=list)


def metadata_json(layers: dict[str, int]) -> str:
    """Serialise ``{weight name: bits}`` as DGMS metadata."""
    return json.dumps({"format": METADATA_FORMAT,
                       "layers": {k: {"bits": int(b)} for k, b in layers.items()}})


def parse_metadata(text: str | bytes | None) -> dict[str, int]:
    """``{weight name: bits}`` from DGMS metadata (empty when absent)."""
    if not text:
        return {}
    try:
        doc = json.loads(text)
        if doc.get("format") != METADATA_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        return {k: int(v["bits"]) for k, v in doc["layers"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"bad DGMS metadata: {err}") from None


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _fixed_note(name: str, dims: list, shape: list[int]) -> str:
    return (f"input {name!r} has dynamic dimension(s) {', '.join(map(str, dims))}: "
            f"compiled for shape {shape} only (each fixed to 1)")


def _fix_dynamic_inputs(mod: tvm.IRModule, num_input: int, notes: list[str]) -> tvm.IRModule:
    """Bind the symbolic dimensions of the model inputs to 1 (the kernels are built for
    static shapes), with a note per input."""
    binds = {}
    for p in mod["main"].params[:num_input]:
        dims = [d for d in p.ty.shape if not isinstance(d, tvm.tirx.IntImm)]
        if dims:
            binds.update({d: 1 for d in dims})
            shape = [1 if not isinstance(d, tvm.tirx.IntImm) else int(d) for d in p.ty.shape]
            notes.append(_fixed_note(p.name, dims, shape))
    return relax.transform.BindSymbolicVars(binds, "main")(mod) if binds else mod


def _split_params(mod: tvm.IRModule, source: str, names, declared,
                  notes: list[str] | None = None) -> ImportedModel:
    notes = [] if notes is None else notes
    main = mod["main"]
    num_input = int(main.attrs["num_input"]) if "num_input" in main.attrs else 1
    mod = _fix_dynamic_inputs(mod, num_input, notes)
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    inputs, weights = [], {}
    for i, p in enumerate(main.params):
        if i < num_input:
            inputs.append((p.name, tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)))
        else:
            weights[p.name] = params["main"][i - num_input].numpy()
    return ImportedModel(mod, weights, {k: names.get(k, k) for k in weights}, declared,
                         inputs, source, notes)


def from_exported_program(ep, declared: dict[str, int] | None = None,
                          source: str = "torch.export") -> ImportedModel:
    """Import a ``torch.export.ExportedProgram``."""
    from tvm.relax.frontend.torch import from_exported_program as _import

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's LeafSpec deprecation
            mod = _import(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    except Exception as err:  # the frontend raises many kinds for ops it lacks
        raise UserError(f"TVM cannot import this torch program: {_first_line(err)}") from None
    names = {spec.arg.name: spec.target for spec in ep.graph_signature.input_specs
             if spec.target is not None}
    return _split_params(mod, source, names, declared or {})


def from_torch(model, example_inputs: tuple, declared=None) -> ImportedModel:
    """``torch.export`` an eval-mode ``nn.Module`` and import it."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own LeafSpec deprecation
        ep = torch.export.export(model.eval(), tuple(example_inputs))
    return from_exported_program(ep, declared, source=type(model).__name__)


def load_pt2(path: Path) -> ImportedModel:
    """Load a saved ``torch.export`` program (``torch.export.save``), metadata included."""
    import torch

    extra = {METADATA_FILE: ""}
    if not zipfile.is_zipfile(path):
        onnx_too = "; an ONNX model? name it .onnx" if _looks_like_onnx(path) else ""
        raise UserError(f"{path}: not a readable torch.export program (not the zip archive "
                        f"torch.export.save writes{onnx_too})")
    # torch logs a 12-line traceback as a warning before raising; the error says it all
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ep = torch.export.load(str(path), extra_files=extra)
    except (RuntimeError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
        raise UserError(f"{path}: not a readable torch.export program "
                        f"({_first_line(err)})"
                        ) from None
    finally:
        quiet.setLevel(level)
    return from_exported_program(ep, parse_metadata(extra[METADATA_FILE]), source=str(path))


def _looks_like_onnx(path: Path) -> bool:
    import onnx

    try:
        return len(onnx.load(str(path)).graph.node) > 0
    except Exception:  # onnx raises DecodeError and others for what is not ONNX
        return False


def load_onnx(path: Path) -> ImportedModel:
    """Load an ONNX model; symbolic input dimensions are fixed to 1 (batch 1), with a note."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, ...
        raise UserError(f"{path}: not a readable ONNX model "
                        f"({_first_line(err)})"
                        ) from None
    meta = {p.key: p.value for p in model.metadata_props}
    init = {t.name for t in model.graph.initializer}
    shapes, notes = {}, []
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = inp.type.tensor_type.shape.dim
        shapes[inp.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
        if dynamic := [d.dim_param or f"dimension {i}" for i, d in enumerate(dims)
                       if not d.HasField("dim_value")]:
            notes.append(_fixed_note(inp.name, dynamic, shapes[inp.name]))
    model = onnx_shapes.fold(model, shapes)  # x.size() and chunk bounds: constants
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=True,
                            sanitize_input_names=False)
    except Exception as err:
        raise UserError(f"TVM cannot import {path}: {_first_line(err)}") from None
    mod = onnx_clips()(mod)  # its Clips (ReLU6) as relax clip / relu: a conv's epilogue
    return _split_params(mod, str(path), {}, parse_metadata(meta.get(METADATA_KEY)), notes)


def onnx_bytes(model, example_inputs: tuple, fold_batchnorm: bool = True,
               metadata: dict[str, int] | None = None) -> bytes:
    """Export a torch model to ONNX with the legacy exporter (the dynamo one needs onnxscript).

    ``fold_batchnorm=True`` is the exporter's default (eval mode): BatchNorm is folded into the
    preceding conv, which turns each output channel into a scaled copy of the codebook.
    """
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), tuple(example_inputs), buf, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"],
            training=torch.onnx.TrainingMode.EVAL if fold_batchnorm
            else torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=fold_batchnorm,
        )
    if not metadata:
        return buf.getvalue()
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata_json(metadata)
    return proto.SerializeToString()
