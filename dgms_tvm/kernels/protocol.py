"""The kernel protocol: what every kernel family provides, and the one codec of its spec.

A kernel family is the value of its PrimFuncs' ``dgms.kernel`` attribute. Its module builds
one :class:`KernelFamily` (``KERNEL``) and the registry, :data:`dgms_tvm.kernels.FAMILIES`,
maps the attribute to it: schedule application, tuning and the benchmarks reach a kernel
only through it, never through module globals.

Every spec is a frozen dataclass with the :class:`Spec` mixin: its JSON (the ``dgms.spec``
attribute, read back by :meth:`Spec.from_func`) is ``json.dumps(dataclasses.asdict(spec))``
exactly. That text is part of the kernel's structure, hence of the workload hash its tuning
records are keyed by: it must not change for a spec that did not.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable

from .common import SPEC_ATTR


class Spec:
    """Mixin of the kernel specs: one JSON codec for all of them."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str):
        return _decode(cls, json.loads(text))

    @classmethod
    def from_func(cls, func):
        """The spec a kernel PrimFunc was made from."""
        return cls.from_json(str(func.attrs[SPEC_ATTR]))


def _decode(tp, value):
    """``value`` (parsed JSON) as type ``tp``: dataclasses field by field, tuples again, an
    optional field (``X | None``) as ``X`` or None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _decode(next(a for a in typing.get_args(tp) if a is not type(None)), value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _decode(hints[f.name], value[f.name])
                     for f in dataclasses.fields(tp) if f.name in value})
    if tp is tuple or typing.get_origin(tp) is tuple:
        return tuple(value)
    return value


def _no_layer(spec, profile) -> str:
    """``supports`` of a family no strategy chooses by itself (the pass makes it for the
    conv it serves)."""
    del spec, profile
    return ""


#: The name of the shift operand the epilogue pass appends to a family without one
#: (``Fusion.shift`` empty), where the epilogue has a bias.
APPENDED_SHIFT = "B"


@dataclasses.dataclass(frozen=True)
class Fusion:
    """How a conv family takes the ops after it as its epilogue (the pass of
    :mod:`dgms_tvm.passes.epilogue` folds them in).

    Attributes
    ----------
    make : callable
        ``make(func, epilogue) -> (name, PrimFunc)``: the kernel ``func`` (made without an
        epilogue) made again with ``epilogue`` (a :class:`~.epilogue.Epilogue`).
    scale : tuple of str
        The operand, by buffer name (the first one the kernel has), its outputs are scaled
        by per output channel along its first axis: a folded BatchNorm's scale goes there.
    shift : str
        The operand holding a per-channel shift already (its outputs' ``B``), or ``""``:
        then the shift is appended when the epilogue has a bias (named
        :data:`APPENDED_SHIFT` in the kernel).
    residual : bool
        Whether it can add a residual (appended last).
    """

    make: Callable
    scale: tuple[str, ...]
    shift: str = ""
    residual: bool = True


@dataclasses.dataclass(frozen=True)
class Int8Out:
    """How a family writes its outputs as the next int8 conv's quantized input (int8 between
    layers: the pass of :mod:`dgms_tvm.passes.int8_chain`), where their range is known when
    the model is compiled.

    Attributes
    ----------
    bound : callable
        ``bound(func) -> float or None``: the largest magnitude the kernel ``func`` can write
        (relu6 in its epilogue: 6), or None where it is not known at compile time.
    why_not : callable
        ``why_not(func, out) -> str``: why ``func`` cannot write the quantized layout ``out``
        (a :class:`~.int8.operands.quantize.QuantSpec`), or ``""``.
    make : callable
        ``make(func, out) -> (name, PrimFunc)``: ``func`` made again to write its outputs
        ``y`` rounded and clamped to int8 (``[0, 127]`` after a relu) in ``out``'s layout,
        instead of float32. The scale is the caller's to fold into the operands: ``1 /
        scale`` times the family's :attr:`Fusion.scale` and :attr:`Fusion.shift` (or
        :data:`APPENDED_SHIFT`) ones, so
        that layers of one shape share a kernel; a bound in the epilogue must then be at
        least 127 (the scale at least ``bound / 127``).
    """

    bound: Callable
    why_not: Callable
    make: Callable


@dataclasses.dataclass(frozen=True)
class KernelFamily:
    """One kernel family.

    Attributes
    ----------
    family : str
        Its ``dgms.kernel`` value.
    spec : type
        Its spec dataclass (with :class:`Spec`).
    compute : callable
        ``compute(spec, ...) -> PrimFunc``: the unscheduled kernel (or, for a kernel written
        already scheduled, the kernel itself).
    schedule : callable
        ``schedule(func, knobs) -> PrimFunc``: its hand schedule from its knobs (the family's
        section of ``schedules/*.json``, with the profile's capability knobs).
    reference : callable
        The NumPy oracle the kernel is tested against.
    supports : callable
        ``supports(spec, profile) -> str``: why it cannot take that layer on that core, or
        ``""`` when it can; a layer's manifest ``reason`` is made of these.
    apply : callable or None
        ``apply(sch, knobs, sample=False)``: the hand schedule's steps on a
        ``tvm.s_tir.Schedule``; with ``sample=True`` its tiles become MetaSchedule decisions.
        None for a kernel written already scheduled (no blocks to transform).
    searchable : bool
        Whether tuning searches it (``apply(..., sample=True)`` is a design space); the
        others keep their hand schedule.
    generic : bool
        Whether tuning also searches TVM's generic schedules of it beside its own design
        space: not for a family whose arithmetic is a tensor intrinsic they cannot reach
        (the smmla conv's: every trial spent there is lost, docs/log.md).
    knobs : bool
        Whether every schedule file must hold its knob section.
    fusion : Fusion or None
        How it takes the ops after it (a conv's epilogue); None: it takes none.
    operand : bool
        Whether it prepares an operand of one conv (the input's quantize, the weight's
        decode): the epilogue pass emits it with that conv.
    quantize : bool
        Whether it is the run-time quantize of an int8 conv's input (``(X) -> (Xq, s_x)``),
        which a producer with :attr:`int8_out` replaces.
    int8_out : Int8Out or None
        How it writes the next int8 conv's input itself; None: it writes float32 only.
    peak : callable or None
        ``peak(profile, bits) -> (instruction, multiply-adds)``: the instruction its
        arithmetic runs on ``profile``'s core for ``bits``-bit weights, and the multiply-adds
        one makes (the floor a report measures the conv against: ``dgms_tvm.bench.floor``),
        or None where it has none there.
    """

    family: str
    spec: type
    compute: Callable
    schedule: Callable
    reference: Callable
    supports: Callable = _no_layer
    apply: Callable | None = None
    searchable: bool = False
    generic: bool = True
    knobs: bool = False
    fusion: Fusion | None = None
    operand: bool = False
    quantize: bool = False
    int8_out: Int8Out | None = None
    peak: Callable | None = None

    def __post_init__(self):
        if self.int8_out is not None and self.fusion is None:
            raise TypeError(f"{self.family}: int8_out needs the fusion's operand names")
        if not issubclass(self.spec, Spec):
            raise TypeError(f"{self.family}: its spec {self.spec.__name__} lacks the Spec codec")
        if self.searchable and self.apply is None:
            raise TypeError(f"{self.family}: searchable, but it has no apply() to sample")
