"""The one numeric comparison (``graphopt.core.verify.compare_outputs``): each criterion checked on its own, at its
boundary, and outputs that cannot be compared value by value (missing, reshaped, another dtype) failing it."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt.core.tolerance import Tolerance
from graphopt.testing import model_from_text
from graphopt.core.runner import Outputs, Runner
from graphopt.core.verify import compare_outputs

# Every criterion set, none at its default, so a pair can fail one and pass the three others.
ALL = Tolerance(max_abs=0.5, max_rel=0.5, cosine=0.95, top1_agreement=0.75)

# (reference, compared) pairs shaped (samples, classes), each outside exactly one criterion of ALL.
ONLY = {
    # |1| error on values near 100: 1% relative, cosine ~1, same argmax
    "max_abs": ([[100.0, 0.0, 50.0]], [[101.0, 0.0, 50.0]]),
    # doubled small value: error 0.2 (abs fine), relative 1.0; cosine 0.976, same argmax
    "max_rel": ([[0.1, 0.2]], [[0.1, 0.4]]),
    # second sample turned by ~24 degrees with every element within 45%: cosine 0.912 there, 1.0 on the first
    # (the criterion is the smallest per-sample cosine, not the largest or the mean over samples)
    "cosine": ([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0, 1.0], [1.45, 0.55, 1.45, 0.55]]),
    # a near tie flipped in one row of two: agreement 0.5, every value within 1%
    "top1_agreement": ([[1.0, 1.01], [1.0, 0.0]], [[1.01, 1.0], [1.0, 0.0]]),
}


def _pair(name):
    ref, got = ONLY[name]
    return {"y": np.asarray(ref, np.float32)}, {"y": np.asarray(got, np.float32)}


@pytest.mark.parametrize("criterion", list(ONLY))
def test_each_criterion_alone_fails_the_comparison(criterion):
    ref, got = _pair(criterion)
    cmp = compare_outputs(ref, got, ALL)
    assert not cmp.passed
    assert cmp.outputs[0].failed_on == (criterion,), cmp.describe()
    # the same pair with that one criterion switched off passes: the three others hold
    off = Tolerance(**{**ALL.__dict__, criterion: None})
    assert compare_outputs(ref, got, off).passed


def test_cosine_is_the_smallest_over_samples():
    ref, got = _pair("cosine")
    d = compare_outputs(ref, got, ALL).outputs[0]
    expected = float(np.dot([1, 1, 1, 1], [1.45, 0.55, 1.45, 0.55]) / (2 * np.linalg.norm([1.45, 0.55, 1.45, 0.55])))
    assert d.cosine == pytest.approx(expected, abs=1e-6) and d.cosine < 0.95


# (criterion, reference, compared, the value measured): values exact in binary, so "equal" is exact
BOUNDARY = [
    ("max_abs", [[1.0, 2.0]], [[1.0, 2.5]], 0.5),
    ("max_rel", [[1.0, 2.0]], [[1.0, 2.5]], 0.25),
    ("top1_agreement", [[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], 0.5),
]


@pytest.mark.parametrize("criterion, ref, got, value", BOUNDARY, ids=[b[0] for b in BOUNDARY])
def test_a_value_equal_to_the_tolerance_passes(criterion, ref, got, value):
    ref, got = {"y": np.asarray(ref, np.float32)}, {"y": np.asarray(got, np.float32)}
    measured = compare_outputs(ref, got, Tolerance(max_abs=None, max_rel=None, cosine=None, top1_agreement=0.0))
    assert getattr(measured.outputs[0], criterion) == value
    only = {k: None for k in ("max_abs", "max_rel", "cosine", "top1_agreement")}
    assert compare_outputs(ref, got, Tolerance(**{**only, criterion: value})).passed
    # the next float on the strict side fails: error bounds are upper bounds, agreement a lower bound
    stricter = np.nextafter(value, 0.0 if criterion != "top1_agreement" else 1.0)
    cmp = compare_outputs(ref, got, Tolerance(**{**only, criterion: float(stricter)}))
    assert cmp.outputs[0].failed_on == (criterion,)


def test_a_cosine_equal_to_the_tolerance_passes():
    ref, got = {"y": np.asarray([[3.0, 4.0]], np.float32)}, {"y": np.asarray([[4.0, 3.0]], np.float32)}
    cosine = compare_outputs(ref, got, ALL).outputs[0].cosine
    assert cosine == pytest.approx(24 / 25, abs=1e-12)
    only = dict(max_abs=None, max_rel=None, top1_agreement=None)
    assert compare_outputs(ref, got, Tolerance(cosine=cosine, **only)).passed
    assert compare_outputs(ref, got, Tolerance(cosine=float(np.nextafter(cosine, 1.0)), **only)).outputs[0].failed_on \
        == ("cosine",)


def test_identical_outputs_pass_the_strictest_tolerance():
    ref, _ = _pair("cosine")
    cmp = compare_outputs(ref, {"y": ref["y"].copy()}, Tolerance(max_abs=0.0, max_rel=0.0, cosine=1.0,
                                                                   top1_agreement=1.0))
    assert cmp.passed and cmp.outputs[0].max_abs == 0.0


def test_nan_where_the_reference_is_finite_fails_every_error_bound():
    ref = {"y": np.asarray([[1.0, 2.0]], np.float32)}
    got = {"y": np.asarray([[1.0, np.nan]], np.float32)}
    d = compare_outputs(ref, got, Tolerance(max_abs=1e9, max_rel=1e9, cosine=None, top1_agreement=None)).outputs[0]
    assert set(d.failed_on) == {"max_abs", "max_rel"} and d.cosine <= 0.0


# ---------------------------------------------------------------------------------------------------------------
# Outputs that cannot be compared value by value: a failed comparison (exit 1), never a "bad input"


def test_missing_output_fails_and_says_so():
    ref = {"y": np.zeros((2, 3), np.float32), "z": np.zeros(2, np.float32)}
    cmp = compare_outputs(ref, {"y": np.zeros((2, 3), np.float32)}, ALL)
    assert [o.passed for o in cmp.outputs] == [True, False]
    assert cmp.outputs[1].failed_on == ("missing",)
    assert cmp.describe("the graph before it") == \
        "output 'z' is missing (the graph before it gave it; the outputs now: 'y')"
    assert cmp.summary()["passed"] is False


def test_dtype_change_fails_and_says_so():
    ref = {"y": np.ones((2, 3), np.float32)}
    cmp = compare_outputs(ref, {"y": np.ones((2, 3), np.float16)}, ALL)
    assert not cmp.passed and cmp.outputs[0].failed_on == ("dtype",)
    assert cmp.describe() == "output 'y' has dtype float16, the reference gave float32"


def test_shape_change_of_plain_arrays_shows_their_shapes():
    cmp = compare_outputs({"y": np.zeros((2, 3), np.float32)}, {"y": np.zeros((2, 4), np.float32)}, ALL)
    assert cmp.outputs[0].failed_on == ("shape",)
    assert cmp.describe() == "output 'y' has shape [2, 4], the reference gave [2, 3]"


def test_shape_change_of_runner_outputs_is_shown_per_sample():
    """The Runner concatenates batches along axis 0; the message shows one batch's shape, what the model gives."""
    a = model_from_text('<ir_version: 8, opset_import: ["" : 13]>\ng (float[2] x) => (float[2] y) { y = Relu(x) }')
    b = model_from_text('<ir_version: 8, opset_import: ["" : 13]>\ng (float[2] x) => (float[3] y) {\n'
                        '  z = Constant<value = float[1] {0}>()\n  y = Concat<axis=0>(x, z)\n}')
    inputs = [np.ones(2, np.float32), np.ones(2, np.float32)]
    ref, got = Runner(a).run(inputs), Runner(b).run(inputs)
    assert isinstance(ref, Outputs) and ref["y"].shape == (4,) and ref.batch_shapes == {"y": [(2,), (2,)]}
    cmp = compare_outputs(ref, got, ALL)
    assert cmp.describe("the graph before it") == "output 'y' has shape [3] per sample, the graph before it gave [2]"
    # a failed structural check is the worst output even beside one failing on every numeric criterion
    ref2 = Outputs({**ref, "w": np.asarray([[1.0, 0.0]], np.float32)}, {**ref.batch_shapes, "w": [(1, 2)]})
    got2 = Outputs({**got, "w": np.asarray([[0.0, 9.0]], np.float32)}, {**got.batch_shapes, "w": [(1, 2)]})
    assert compare_outputs(ref2, got2, ALL).worst.name == "y"


def test_cli_verify_of_models_with_different_output_shapes_exits_1(tmp_path, capsys):
    import onnx

    from graphopt.commands.cli import main

    a = model_from_text('<ir_version: 8, opset_import: ["" : 13]>\ng (float[N, 2] x) => (float[N, 2] y) '
                        '{ y = Relu(x) }')
    b = model_from_text('<ir_version: 8, opset_import: ["" : 13]>\ng (float[N, 2] x) => (float[N, 4] y) '
                        '{ y = Concat<axis=1>(x, x) }')
    onnx.save(a, tmp_path / "a.onnx")
    onnx.save(b, tmp_path / "b.onnx")
    code = main(["verify", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--shape", "3,2"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err and err == "", err
    assert "output 'y' has shape [3, 4] per sample, model A gave [3, 2]: OUTSIDE TOLERANCE (shape)" in out


FLAGS = [("--cosine", "2", "--cosine: must be within (0, 1]"),
         ("--cosine", "0", "--cosine: must be within (0, 1]"),
         ("--max-abs", "-1", "--max-abs: must be a finite number >= 0"),
         ("--max-rel", "nan", "--max-rel: must be a finite number >= 0")]


# diff judges intermediate tensors, not class scores: it has no --top1
@pytest.mark.parametrize("command, flag, value, message", [(c, *f) for c in ("verify", "diff") for f in FLAGS]
                         + [("verify", "--top1", "1.5", "--top1: must be within [0, 1]")])
def test_cli_tolerance_flags_out_of_range_are_bad_input(tmp_path, capsys, command, flag, value, message):
    from graphopt.commands.cli import main

    # the models are never read: the flags are refused first (the files need not exist)
    code = main([command, str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"graphopt: error: {message}") and err.count("\n") == 1, err
