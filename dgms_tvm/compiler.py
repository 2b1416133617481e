"""The compile driver: imported model -> codebook lowering -> schedules -> TVM executable."""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from . import strategies
from .errors import UserError
from .frontend import ImportedModel
from .kernels import conv_layer
from .passes import LayerRecord, LoweringPolicy, int8_chain, lower_codebook_layers
from .passes.batchnorm import fold_batch_norm
from .schedules.hand import apply_schedules, load_knobs
from .targets import TargetProfile, get_profile


@dataclasses.dataclass
class Lowered:
    """A Relax module ready to build, and what the lowering did per layer."""

    mod: tvm.IRModule
    records: list[LayerRecord]


def lower(imported: ImportedModel, bits: int | None = None, codebooks: bool = True,
          fp32_kernels: bool = True, strategy: str = "exact", profile=None,
          zero_skip: bool = True, calibration: list[np.ndarray] | None = None,
          layer_strategy: dict[str, str] | None = None) -> Lowered:
    """Run the codebook lowering, then bind the remaining weights as constants.

    Parameters
    ----------
    imported : ImportedModel
    bits : int, optional
        Widest codebook accepted from weight values; layers declared by metadata use theirs.
    codebooks : bool
        False builds the FP32 baseline: the same graph, kernels and schedules, float weights.
    fp32_kernels : bool
        False leaves FP32 conv2d / dense layers to TVM's default lowering (untuned TVM).
    strategy : str
        ``exact``, ``int8``, ``int8-full`` or ``lut`` (resolved: :mod:`.strategies`).
    profile : TargetProfile, optional
        The build's target: batch-1 dense layers use the GEMV kernels where its core has their
        instructions (x86 with AVX-512), int8 convs the form its core runs; without it, the
        generic kernels.
    zero_skip : bool
        Drop the all-zero input channels of codebook layers where that pays (see
        :class:`~dgms_tvm.passes.records.LoweringPolicy`).
    calibration : list of ndarray, optional
        Inputs (each the model's one input) to calibrate int8 between layers on, in an int8
        build (:mod:`.passes.int8_chain`: the module is built and run on this host for it);
        None keeps every int8 conv's run-time input quantize.
    layer_strategy : dict, optional
        Layer name -> the strategy its conv takes instead of ``strategy`` (chosen by
        measurement: :mod:`.choice`).
    """
    records: list[LayerRecord] = []
    mod = imported.mod
    if codebooks or fp32_kernels:
        policy = LoweringPolicy(imported.weights, bits, imported.declared, imported.names,
                                codebooks=codebooks, fp32_kernels=fp32_kernels,
                                strategy=strategy, profile=profile, zero_skip=zero_skip,
                                layer_strategy=dict(layer_strategy or {}))
        mod = lower_codebook_layers(policy, records)(mod)
        errors = [r.error for r in records if r.error]
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise UserError(errors[0] + more)
    # Bind every weight: those the lowering replaced are no longer used and simply vanish.
    binds = {n: tvm.runtime.tensor(v) for n, v in imported.weights.items()}
    mod = relax.transform.BindParams("main", binds)(mod)
    # the BatchNorms no conv kernel took: a multiply-add each, not TVM's division
    mod = fold_batch_norm(mod)
    if calibration and codebooks and strategies.is_int8(strategy):
        mod = _chain_int8(mod, records, calibration)
    return Lowered(mod, records)


def _chain_int8(mod: tvm.IRModule, records: list[LayerRecord],
                inputs: list[np.ndarray]) -> tvm.IRModule:
    """int8 between layers (:mod:`.passes.int8_chain`), each candidate's level measured by
    running the module built for this host (its kernels' plain vector forms: the same
    values) on ``inputs``."""
    probe, count = int8_chain.probe(mod)
    if not count:
        return mod
    exe = build(Lowered(probe, []), get_profile("x86"))
    levels = np.zeros(count)
    for x in inputs:
        outs = run_local(exe, [x])[-count:]
        levels = np.maximum(levels, [float(np.abs(o).max()) for o in outs])
    return int8_chain.chain_int8(list(levels), records)(mod)


def prepare(lowered: Lowered, profile: TargetProfile, knobs: dict | None = None,
            schedule: bool = True, database=None,
            applied: dict | None = None) -> tvm.IRModule:
    """Legalize and fuse the FP32 ops and schedule the kernels: the module ``build``
    compiles (its PrimFuncs are what runs, one per call site of ``main``).

    Codebook kernels are marked opaque, so fusion leaves them whole and their schedule (from
    ``schedules/<target>.json`` unless ``knobs`` is given) applies as written. With a tuning
    ``database``, every kernel it holds a record for gets the tuned schedule instead;
    ``applied`` then receives {kernel name: how it was scheduled} (``apply_records``).
    ``schedule=False`` stops before any schedule (the tuner's tasks).
    """
    target = profile.tvm_target()
    knobs = knobs if knobs is not None else load_knobs(profile)
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    with target:
        mod = seq(lowered.mod)
    if not schedule:
        return mod
    if database is not None:
        from .schedules.apply_records import apply_database

        mod, how = apply_database(mod, database, target, knobs)
        if applied is not None:
            applied.update(how)
        return mod
    return apply_schedules(mod, knobs)


def build(lowered: Lowered, profile: TargetProfile, knobs: dict | None = None):
    """``prepare`` then compile for the profile's target.

    Returns
    -------
    tvm.relax.VMExecutable
    """
    return tvm.compile(prepare(lowered, profile, knobs), target=profile.tvm_target())


def call_sites(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs ``main`` calls, one per ``call_tir``, in execution order."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    names: list[str] = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            names.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


def site_layers(mod: tvm.IRModule) -> dict[str, object]:
    """Each PrimFunc ``main`` calls -> the layer it runs: a conv's shape
    (:func:`dgms_tvm.kernels.conv_layer`), the same in every build of a model, else its
    name."""
    return {name: conv_layer(mod[name]) or name for name in call_sites(mod)}


def kernel_module(mod: tvm.IRModule) -> tvm.IRModule:
    """The PrimFuncs of a prepared module alone, each exported under its own name (to run and
    measure them one by one)."""
    return tvm.IRModule({gv: f.with_attr("global_symbol", gv.name_hint)
                         for gv, f in mod.functions_items()
                         if isinstance(f, tvm.tirx.PrimFunc)})


def outputs_of(mod: tvm.IRModule) -> list[dict]:
    """Output names, shapes and dtypes of ``main``."""
    ty = mod["main"].ret_ty
    tys = list(ty.fields) if isinstance(ty, relax.TupleType) else [ty]
    return [{"name": f"output{i}", "shape": [int(d) for d in t.shape], "dtype": str(t.dtype)}
            for i, t in enumerate(tys)]


def run_local(executable, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run ``main`` of a host executable (or loaded library) on the CPU."""
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in inputs])
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [o.numpy() for o in out]
