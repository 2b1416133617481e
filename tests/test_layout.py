"""The package's structure: no import circle, the compile core below tuning, benchmarks and
the device harness, the measurement layer below choice, benchmarks and tuning, small files,
CPU features named in one place."""

import ast
from pathlib import Path

import pytest

from dgms_tvm import targets

PACKAGE = Path(__file__).resolve().parents[1] / "dgms_tvm"
#: The compile core: it may import only itself (and the standard library, TVM, NumPy).
CORE = ("format", "detect", "frontend", "targets", "strategies", "errors", "kernels",
        "passes", "schedules", "compiler")
#: What the core must never import.
ABOVE_CORE = ("tune", "bench", "device", "pipeline", "cli")
#: The compile path above the core (``compile``, ``run`` and ``compile --choose``): it
#: measures kernels through :mod:`dgms_tvm.measure`, never through the benchmarks.
COMPILE_PATH = ("choice", "pipeline", "calibration", "artifact", "outputs", "commands.compile",
                "commands.run")
#: What the measurement layer stands below (it measures for them, never the reverse).
ABOVE_MEASURE = ("bench", "tune", "choice", "pipeline", "commands", "cli")
MAX_LINES = 400
#: The modules that may name CPU features: the capability table, and the strategy table
#: (``auto``'s rules name the capability each one needs).
FEATURE_MODULES = {"targets", "strategies"}
#: Names that are also identifiers of something else: the int8 conv's ``dot`` knob value,
#: the GEMV kernels' AVX2 form.
NOT_FEATURES = {"vnni", "avx2"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports, anywhere in it (function bodies included)."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1] + (node.module.split(".")
                                                           if node.module else [])
            elif node.module and node.module.split(".")[0] == "dgms_tvm":
                base = node.module.split(".")[1:]
            else:
                continue
            targets_ = [".".join(base), *(".".join([*base, a.name]) for a in node.names)]
        elif isinstance(node, ast.Import):
            targets_ = [a.name.split(".", 1)[1] for a in node.names
                        if a.name.startswith("dgms_tvm.")]
        else:
            continue
        for t in targets_:
            while t and t not in MODULES and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in MODULES and t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(GRAPH[v]):
            # a package's __init__ re-exporting its own modules is no circle
            inside = w.startswith(v + ".") and MODULES[v].name == "__init__.py"
            if v.startswith(w + ".") or inside:
                continue
            if state.get(w) == 1:
                return [*stack[stack.index(w):], w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(GRAPH):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_import_graph_is_read():
    # (the checks below are only as good as the graph: it holds the known edges)
    assert "schedules.hand" in GRAPH["compiler"]
    assert "kernels.int8.sdot" in GRAPH["passes.int8_conv"]
    assert "measure.host" in GRAPH["choice"] and "measure.jobs" in GRAPH["bench.on_device"]
    assert "tune.tuner" in GRAPH["tune.driver"] and "device.insn" in GRAPH["tune.tuner"]


def test_no_import_circle():
    assert _cycle() is None, " -> ".join(_cycle())


def _is_core(name: str) -> bool:
    return name.split(".")[0] in CORE


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _is_core(n)))
def test_the_compile_core_imports_nothing_above_it(name):
    above = sorted(m for m in GRAPH[name] if m.split(".")[0] in ABOVE_CORE)
    assert not above, f"{name} imports {above}"


def _under(name: str, places) -> bool:
    return any(name == p or name.startswith(p + ".") for p in places)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _under(n, COMPILE_PATH)))
def test_the_compile_path_never_climbs_into_the_benchmarks(name):
    bench = sorted(m for m in GRAPH[name] if _under(m, ("bench",)))
    assert not bench, f"{name} imports {bench}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _under(n, ("measure",))))
def test_the_measurement_layer_imports_nothing_it_serves(name):
    above = sorted(m for m in GRAPH[name] if _under(m, ABOVE_MEASURE))
    assert not above, f"{name} imports {above}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_package_file_is_over_400_lines(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]}: {lines} lines"


#: LLVM feature names (as ``mattr`` spells them, or bare) and capability names.
_FEATURES = {f for feats in targets.CAPABILITIES.values() for f in feats} | set(
    targets.CAPABILITIES)
_ASKS = {"has", "host_has", "target_has_features"}


def _names_features(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.lstrip("+-") in _FEATURES - NOT_FEATURES:
            return True
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in _ASKS:
            return True
    return False


def test_cpu_features_are_named_in_at_most_two_modules():
    naming = {n for n, p in MODULES.items() if _names_features(p)}
    assert "targets" in naming  # the check sees the table itself
    assert naming <= FEATURE_MODULES, sorted(naming - FEATURE_MODULES)


def test_readme_is_short_and_speaks_to_any_reader():
    readme = (PACKAGE.parent / "README.md").read_text()
    assert readme.count("\n") <= 150
    assert "this session" not in readme
    # the two commands of the set-up contract, the second exactly what CI runs
    ci = (PACKAGE.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme and "bash scripts/setup.sh && .venv/bin/dgms-tvm bench" in readme
