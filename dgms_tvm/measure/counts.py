"""Instructions per call of a function on an emulated device, from its counter
(:class:`dgms_tvm.device.insn.Counter`): the device job pool's kernels and models and the
tuner's candidates are counted the same way."""

from __future__ import annotations

#: Instructions per call below which a count is averaged over more calls: the serving
#: process adds a few thousand around any call.
SMALL_KERNEL = 2e6


def per_call(counter, factory, calls: int = 2) -> float:
    """Instructions per call of the remote function that ``factory(n)`` runs ``n`` times:
    the counts over 1 and ``calls`` calls, differenced (:meth:`Counter.per_call`); for a
    small kernel, over as many more calls (at most 101) as lift it above the serving
    process's own instructions."""
    count = counter.per_call(factory, 1, calls)
    if count < SMALL_KERNEL:
        count = counter.per_call(factory, 1, 1 + min(100, int(SMALL_KERNEL / max(count, 1e4))))
    return count
