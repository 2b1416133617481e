"""Count kernels on a device of a key: each layer of a build's ``main`` with its kernels run
alone on the Cortex-A devices under a tracker key, instructions and estimated cycles per
call, the layers as :func:`.host.layers` groups them. What ``compile --choose`` measures on
an ARM target."""

from __future__ import annotations

from pathlib import Path

from .jobs import Job, kernel_job, run_jobs
from .sites import group_layer, group_sites


def layers(prepared, profile, tracker, key: str, workdir: Path, workers: int = 1) -> list[dict]:
    """Each layer of ``main`` in order: its kernels, M instructions and M estimated cycles
    (each kernel run once alone under the counter; the counts are deterministic), and the
    conv's shape as ``key`` (None for a layer that runs no conv)."""
    import tvm

    from .. import compiler

    kmod = compiler.kernel_module(prepared)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "kernels.so"
    tvm.compile(kmod, target=profile.tvm_target()).export_library(
        str(path), fcompile=profile.cross_compiler())
    sites = compiler.call_sites(prepared)
    jobs = [Job(f"kernel {name}", "kernel", "", path, name) for name in dict.fromkeys(sites)]
    run_jobs(jobs, lambda job, dev: kernel_job(job, dev, kmod[job.name], 1, 1), tracker,
              key, profile, workdir, True, workers)
    per = {j.name: j.result for j in jobs}
    by_site = compiler.site_layers(prepared)
    rows = []
    for kernels in group_sites(sites):
        layer = group_layer(by_site, kernels)
        cycles = [per[k]["mcycles"] for k in kernels]
        rows.append({"kernels": " + ".join(kernels),
                     "minstr": sum(per[k]["minstr"] for k in kernels),
                     "mcycles": None if None in cycles else sum(cycles),
                     "key": layer if isinstance(layer, tuple) else None})
    return rows
