"""``run``'s inputs as a user gives them (issue: defects found trying it as a new user
would): an .npz's arrays go to the model's inputs by name, not by position; an --output that
is the --input file is refused; input with NaN or Inf is refused unless asked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dgms_tvm import pipeline
from dgms_tvm.commands import run
from tests.reliability.test_failures import _one_error


@pytest.fixture(scope="module")
def difference(tmp_path_factory):
    """An artifact of ``y = a - b`` (two inputs: their order matters)."""
    folder = tmp_path_factory.mktemp("sub")
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "aby"]
    graph = helper.make_graph([helper.make_node("Sub", ["a", "b"], ["y"])], "sub", vi[:2],
                              vi[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, folder / "sub.onnx")
    pipeline.compile_model(str(folder / "sub.onnx"), "x86", folder / "art", bits=None,
                           quiet=True, tuning_logs=None, strategy="exact")
    return folder / "art"


A = np.arange(4, dtype=np.float32).reshape(1, 4)
B = np.full((1, 4), 10, np.float32)


def test_npz_arrays_go_to_the_inputs_of_their_names(difference, tmp_path, capsys):
    # Old code: fed by position, b - a.
    np.savez(tmp_path / "x.npz", b=B, a=A)
    assert run.main(["--artifact", str(difference), "--input", str(tmp_path / "x.npz"),
                     "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), A - B)
    # NumPy's own names (savez(*arrays)) are positional
    np.savez(tmp_path / "p.npz", A, B)
    assert run.main(["--artifact", str(difference), "--input", str(tmp_path / "p.npz"),
                     "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), A - B)


def test_npz_names_the_model_lacks_are_refused(difference, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", a=A, c=B)
    code = run.main(["--artifact", str(difference), "--input", str(tmp_path / "x.npz"),
                     "--output", str(tmp_path / "y.npy")])
    assert _one_error(code, capsys) == ("error: the input file names c, which the model "
                                        "lacks and lacks b (the model's inputs: a, b)")
    assert not (tmp_path / "y.npy").exists()


def test_output_that_is_the_input_is_refused(difference, tmp_path, capsys):
    # Old code: the input overwritten by the output, without a word.
    np.savez(tmp_path / "x.npz", a=A, b=B)
    before = (tmp_path / "x.npz").read_bytes()
    code = run.main(["--artifact", str(difference), "--input", str(tmp_path / "x.npz"),
                     "--output", str(tmp_path / "." / "x.npz")])
    assert "is the --input file" in _one_error(code, capsys)
    assert (tmp_path / "x.npz").read_bytes() == before


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_input_is_refused_unless_asked(difference, tmp_path, capsys, bad):
    # Old code: NaN in, a finite plausible output (onnxruntime gives NaN).
    a = A.copy()
    a[0, 1] = bad
    np.savez(tmp_path / "x.npz", a=a, b=B)
    argv = ["--artifact", str(difference), "--input", str(tmp_path / "x.npz"), "--output",
            str(tmp_path / "y.npy")]
    assert "input a holds 1 NaN or Inf value(s)" in _one_error(run.main(argv), capsys)
    assert not (tmp_path / "y.npy").exists()
    assert run.main([*argv, "--allow-nonfinite"]) == 0
    assert not np.isfinite(np.load(tmp_path / "y.npy")[0, 1])
