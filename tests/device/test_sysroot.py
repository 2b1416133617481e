"""The guest's Python files are compiled to bytecode as the sysroot is built (the guest never
writes any: compiling under emulation at every start doubled a device's start), named by the
paths the guest reads them from."""

import marshal

from dgms_tvm.device import sysroot


def test_bytecode_is_compiled_under_the_final_paths(tmp_path):
    root, final = tmp_path / "tmp-root", tmp_path / "root"
    for rel in ("usr/lib/python3.11/stdmod.py", "site/pkg/__init__.py"):
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text("X = 1\n")
    sysroot._compile_bytecode(root, final)
    for rel in ("usr/lib/python3.11/stdmod.py", "site/pkg/__init__.py"):
        (pyc,) = (root / rel).parent.glob("__pycache__/*.cpython-311.pyc")
        code = marshal.loads(pyc.read_bytes()[16:])
        assert code.co_filename == str(final / rel)


def test_the_guest_takes_no_optional_module_slow_to_load():
    assert not any(w.split("=")[0] == "ml_dtypes" for w in sysroot.WHEELS)
