"""One MetaSchedule database per target, which every model's compile applies and every tuning
run adds to.

Layout under a logs root (``tuning_logs/`` by default)::

    <target>/database_workload.json        MetaSchedule's JSON database: records keyed by
    <target>/database_tuning_record.json   each kernel's structural hash, not by model
    <target>/runs.json                     every tuning run that went in (model, bits,
                                           measure, budget, trials, seconds, machine, date)

A database holds records of one measure (``time`` or ``instructions``): their ``run_secs``
are not comparable, and MetaSchedule would rank them together. ``runs.json`` names the
measure; tuning with another one into the same folder is refused.

The workload file is rewritten compacted (``compact``) after a tuning run and whenever a
database is written whole; MetaSchedule appends it indented, twice the size.

The database files are append-only JSON lines: a run killed halfway leaves them loadable (a
torn last line is dropped on load). ``runs.json`` is rewritten whole, atomically (a temporary
file, then ``os.replace``); a torn one (from an older version) is set aside with a warning.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import tempfile
from pathlib import Path

from ..errors import UserError
from .apply_records import record_cost, untuned_wins

DB_FILES = ("database_workload.json", "database_tuning_record.json")
RUNS = "runs.json"
DEFAULT_LOGS = Path(__file__).resolve().parents[2] / "tuning_logs"
KEEP = 4  # records kept per workload when pruning: the best few, as MetaSchedule ranks them


def target_dir(root: Path, target: str) -> Path:
    """The folder of ``target``'s database under the logs root ``root``."""
    return Path(root) / target


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` so that a reader sees the old file or the new one,
    never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is not what a shipped file should have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_runs(folder: Path, log=print) -> tuple[list[dict], bool]:
    """(the runs listed in ``folder/runs.json``, whether that file was torn). None there:
    ([], False). A file that is not whole JSON is renamed ``runs.json.torn`` with a warning
    and ([], True) returned: the records are in the database, only their bookkeeping is
    lost."""
    path = Path(folder) / RUNS
    if not path.exists():
        return [], False
    try:
        runs = json.loads(path.read_text())
        if not isinstance(runs, list):
            raise ValueError("not a list of runs")
        return runs, False
    except (json.JSONDecodeError, ValueError) as err:
        torn = path.with_name(RUNS + ".torn")
        os.replace(path, torn)
        log(f"warning: {path} is torn ({str(err)[:80]}); set aside as {torn.name}, resuming "
            "from the records in the database")
        return [], True


def measure_of(runs: list[dict]) -> str | None:
    """The measure of a database's records, from its runs (None: no run yet).

    Raises
    ------
    UserError
        The runs disagree (records of two measures in one database).
    """
    measures = {r.get("measure") for r in runs} - {None}
    if len(measures) > 1:
        raise UserError(f"tuning runs of several measures ({', '.join(sorted(measures))}) in "
                        "one database; keep each measure in its own --tuning-logs folder")
    return next(iter(measures), None)


def repair(folder: Path) -> int:
    """Drop lines of the database files that are not whole JSON (a kill mid-write). Returns
    how many were dropped."""
    dropped = 0
    for name in DB_FILES:
        path = Path(folder) / name
        if not path.exists():
            continue
        good, bad = [], 0
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                json.loads(line)
                good.append(line)
            except json.JSONDecodeError:
                bad += 1
        if bad:
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(g + "\n" for g in good))
            os.replace(tmp, path)
        dropped += bad
    return dropped


def open_database(folder: Path, create: bool = False):
    """MetaSchedule's JSON database in ``folder`` (repaired first).

    Raises
    ------
    UserError
        The files do not load (not a MetaSchedule database).
    """
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    repair(folder)
    try:
        return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=create)
    except Exception as err:  # any load failure is a bad log
        first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise UserError(f"tuning logs in {folder} do not load: {first[:160]}") from None


def load(root: Path | None, target: str, log=print):
    """``target``'s database under ``root`` and its folder, or (None, folder) when there is
    none or it does not load (a warning: the build is untuned), (None, None) without a
    root."""
    if root is None:
        return None, None
    folder = target_dir(root, target)
    if not (folder / DB_FILES[1]).exists():
        return None, folder
    try:
        return open_database(folder), folder
    except UserError as err:
        log(f"warning: {err}; building without them")
        return None, folder


def pruned(records, keep: int = KEEP) -> list:
    """Of ``records``, per workload: the ``keep`` best valid ones and the best untuned
    baseline with an empty trace (TVM's default: compile needs it to see that the default
    won, as MetaSchedule's queries skip such records), best first; failed ones dropped."""
    import tvm_ffi

    by: dict[int, list] = {}
    for r in records:
        cost = record_cost(r)
        if cost is not None:
            by.setdefault(tvm_ffi.structural_hash(r.workload.mod), []).append((cost, r))
    out = []
    for rows in by.values():
        rows.sort(key=lambda cr: cr[0])
        kept = [r for _, r in rows[:keep]]
        empty = next((r for _, r in rows if len(r.trace.insts) == 0), None)
        if empty is not None and all(k is not empty for k in kept):
            kept.append(empty)
        out += kept
    return out


def compact_workload_line(line: str) -> str:
    """One line of ``database_workload.json`` with its module's JSON written without
    indentation (half the bytes; TVM's loader reads either).

    The line is ``[structural hash, base64 of (uint64 length, TVM's JSON of the IRModule)]``;
    TVM writes that JSON indented. A line not of that layout is returned as it is."""
    try:
        key, blob = json.loads(line)
        raw = base64.b64decode(blob, validate=True)
        (size,) = struct.unpack("<Q", raw[:8])
        if size != len(raw) - 8:
            return line
        text = json.dumps(json.loads(raw[8:]), separators=(",", ":")).encode()
    except (ValueError, TypeError, struct.error):
        return line
    packed = base64.b64encode(struct.pack("<Q", len(text)) + text).decode()
    return json.dumps([key, packed])


def compact(folder: Path) -> None:
    """Rewrite ``folder``'s workload file with every line compacted, atomically."""
    path = Path(folder) / DB_FILES[0]
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(compact_workload_line(ln) + "\n" for ln in lines if ln.strip()))
    os.replace(tmp, path)


def write_database(records, folder: Path) -> None:
    """A fresh database in ``folder`` holding ``records`` (replacing what was there), its
    workloads compacted (``compact_workload_line``): shipped databases stay small."""
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dgms-db-", dir=folder) as tmp:
        fresh = ms.database.JSONDatabase(work_dir=tmp, allow_missing=True)
        for r in records:
            fresh.commit_tuning_record(ms.database.TuningRecord(
                r.trace, fresh.commit_workload(r.workload.mod), r.run_secs, r.target,
                r.args_info))
        compact(Path(tmp))
        for name in DB_FILES:
            os.replace(Path(tmp) / name, folder / name)


def drop_default_wins(folder: Path) -> int:
    """Rewrite the database in ``folder`` without the workloads whose best record is TVM's
    default (``apply_records.untuned_wins``): compile keeps the default for them whatever
    their records say, so they only weigh the shipped files (a MobileNetV2 database: 3.7 of
    its 6.4 MB). Returns how many workloads were dropped."""
    import tvm_ffi

    db = open_database(folder)
    wins = untuned_wins(db)
    if wins:
        write_database([r for r in db.get_all_tuning_records()
                        if tvm_ffi.structural_hash(r.workload.mod) not in wins], folder)
    return len(wins)


def merge(sources: list[Path], dest: Path, keep: int = KEEP, runs: list[dict] | None = None,
          log=print) -> dict:
    """Merge the databases in ``sources`` (and the one in ``dest``, if any) into ``dest``,
    pruned to the ``keep`` best records per workload; ``runs`` (what produced them) are
    appended to ``dest/runs.json``.

    Raises
    ------
    UserError
        The runs name more than one measure.

    Returns
    -------
    dict
        {"records_in", "records_out", "workloads"}.
    """
    import tvm_ffi

    dest = Path(dest)
    all_runs = read_runs(dest, log)[0] + list(runs or [])
    measure_of(all_runs)
    records = []
    for folder in [*sources, dest]:
        if (Path(folder) / DB_FILES[1]).exists():
            records += list(open_database(folder).get_all_tuning_records())
    kept = pruned(records, keep)
    write_database(kept, dest)
    write_json_atomic(dest / RUNS, all_runs)
    return {"records_in": len(records), "records_out": len(kept),
            "workloads": len({tvm_ffi.structural_hash(r.workload.mod) for r in kept})}
