"""The device job pool: jobs handed to whichever of the devices under a tracker key is free,
each device one session with its uploaded modules, and a kernel run alone with its
instructions counted and its cycles estimated (the benchmarks and ``compile --choose``)."""

from __future__ import annotations

import dataclasses
import queue
import re
import sys
import threading
import time
from pathlib import Path

from ..device.client import Tracker
from ..device.cycles import estimate
from ..errors import UserError
from .counts import per_call


@dataclasses.dataclass
class Job:
    """One unit of device work; the pool hands jobs to whichever device is free."""

    label: str
    kind: str  # "model" | "kernel" | "peer"
    build: str
    path: Path | None = None  # library to upload (model / kernel jobs)
    name: str | None = None  # kernel name (kernel jobs)
    result: dict | None = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_warned: list = []  # the warnings given: no cycle estimate, unreadable blocks
NO_CYCLES = {"mcycles": None, "hot": None}


class Device:
    """One session on a device from the tracker, with its uploaded modules cached."""

    def __init__(self, tracker: Tracker, key: str, profile, workdir: Path, counting: bool,
                 timeout: float):
        self.profile = profile
        self.sess = tracker.request(key, timeout=timeout)
        self.dev = self.sess.cpu()
        self.modules: dict[Path, object] = {}
        self.counter = None
        if counting:
            from ..device.insn import Counter

            self.counter = Counter(self.sess, profile, key, workdir)

    def close(self) -> None:
        """Give the device back to the tracker now (the session ends when freed)."""
        import gc

        self.modules.clear()
        self.counter = None
        self.sess = self.dev = None
        gc.collect()

    def module(self, path: Path):
        if path not in self.modules:
            remote = f"{path.parent.name}-{path.name}"
            self.sess.upload(str(path), remote)
            self.modules[path] = self.sess.load_module(remote)
        return self.modules[path]

    def measure(self, make_eval, repeat: int, number: int):
        """Times (ms) and, when counting, M instructions per call of one remote function and
        its cycle figures (:meth:`Estimate.figures`); ``make_eval(number, repeat)`` gives its
        ``time_evaluator``."""
        if self.counter is None:
            res = make_eval(number, repeat)()
            return [1e3 * s for s in res.results], None, NO_CYCLES
        times: list[float] = []

        def factory(n):
            def call():
                times.append(1e3 * make_eval(n, 1)().mean)
            return call

        count = per_call(self.counter, factory)
        return times[-1:], 1e-6 * count, self._cycles(self.counter.executions)

    def _cycles(self, executions) -> dict:
        """The cycle figures per call, or none (with one warning) where there is no
        estimate: a device without a block log, or no llvm-mca here."""
        try:
            if executions is None:
                raise UserError("the device keeps no block log (started by an older version: "
                                "restart it)")
            est = estimate(executions, self.profile.mcpu)
            if est.unparsed and len(_warned) < 2:
                _warned.append(est)
                log(f"note: llvm-mca could not read {len(est.unparsed)} hot block(s) (the "
                     f"first: {est.unparsed[0]!r}); charged at the others' cycles per "
                     f"instruction ({est.coverage:.1%} of the instructions weighed)")
            return est.figures()
        except UserError as err:
            if not any(isinstance(w, UserError) for w in _warned):
                _warned.append(err)
                log(f"warning: no cycle estimate: {err}")
            return NO_CYCLES

#: How QEMU reports the signal a guest process died of (in the device's log).
SIGNAL = re.compile(r"uncaught target signal (\d+) \(([^)]+)\)")


def device_logs(key: str) -> dict[Path, int]:
    """The logs of the emulated devices under ``key`` started here, and their sizes now."""
    from ..device.sysroot import run_dir

    return {p: p.stat().st_size for p in run_dir().glob(f"device-{key}-*.log")}


def died_of(key: str, since: dict[Path, int]) -> str:
    """The signal an emulated device under ``key`` died of after ``since`` (its logs' sizes
    then), as QEMU wrote it (``signal 4 (Illegal instruction)``), or ``""``."""
    for attempt in range(3):  # (QEMU may write it just after the session's socket closes)
        for path, size in device_logs(key).items():
            with open(path, "rb") as f:
                f.seek(since.get(path, 0))
                if m := SIGNAL.search(f.read().decode(errors="replace")):
                    return f"signal {m.group(1)} ({m.group(2)})"
        time.sleep(0.5 * (attempt < 2))
    return ""


def kernel_job(job: Job, dev: Device, func, repeat: int, number: int) -> dict:
    import tvm

    from .operands import random_inputs

    args = [tvm.runtime.tensor(a, dev.dev) for a in random_inputs(func)]
    rmod = dev.module(job.path)

    def make_eval(n, r):
        ev = rmod.time_evaluator(job.name, dev.dev, number=n, repeat=r)
        return lambda: ev(*args)

    ms, minstr, cycles = dev.measure(make_eval, repeat, number)
    return {"ms": ms, "minstr": minstr, **cycles}

def run_jobs(jobs: list[Job], run_one, tracker: Tracker, key: str, profile, workdir: Path,
              counting: bool, workers: int, timeout: float = 300.0) -> None:
    """Run ``jobs`` on up to ``workers`` devices under ``key`` at once (each worker holds one
    tracker session). A job whose device dies is retried once on a fresh session (the
    supervisor restarts emulated devices); a second failure stops the run with a clear error."""
    from tqdm import tqdm

    todo = queue.Queue()
    for j in jobs:
        todo.put(j)
    failed: list[UserError] = []
    lock = threading.Lock()
    bar = tqdm(total=len(jobs), desc=f"device jobs ({workers} device(s) under {key})",
               file=sys.stderr, leave=False)

    def worker():
        dev = None
        try:
            while not failed:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                for attempt in (1, 2):
                    logs = device_logs(key)
                    try:
                        if dev is None and job.kind != "peer":
                            dev = Device(tracker, key, profile, workdir, counting, timeout)
                        job.result = run_one(job, dev)
                        break
                    except UserError as err:
                        failed.append(err)
                        return
                    except Exception as err:  # the device or its session died
                        if dev is not None:
                            dev.close()
                        dev = None
                        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                        if sig := died_of(key, logs):  # the kernel that killed it, and how
                            first = f"the device died of {sig}" + (
                                f": an instruction the emulated {profile.name} lacks"
                                if sig.startswith("signal 4 ") else "")
                        if attempt == 2:
                            failed.append(UserError(
                                f"{job.label} failed twice on devices under key {key!r} "
                                f"(the device died? see its log): {first}"))
                            return
                        tqdm.write(f"  {job.label}: device lost ({first[:120]}); retrying "
                                   "once on a fresh device", file=sys.stderr)
                with lock:
                    bar.update(1)
        finally:
            if dev is not None:
                dev.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    bar.close()
    if failed:
        raise failed[0]
