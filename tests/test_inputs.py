"""Any model in (graphopt.core.inputs, issue 15): several inputs, integer, bool, fp16, scalar, zero-size and symbolic
inputs, through the inputs spec, the Runner, the comparison, `graphopt apply`, `graphopt verify` and the ATC
hand-off; integer and bool outputs compared exactly; errors naming the input, never a weight."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto as T
from onnx import helper as oh
from onnx import numpy_helper as nh

from graphopt.core.errors import UserError
from graphopt.core.feeds import make_inputs
from graphopt.core.inputs import BATCH_DEFAULT, DIM_DEFAULT, InputSpec, resolve_inputs
from graphopt.core.model_inputs import model_inputs
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.forms import split_model
from graphopt.core.tolerance import OutputTolerance, Tolerance
from graphopt.testing import assert_pass_verified, compare_models
from graphopt.core.runner import Runner
from graphopt.core.verify import compare_outputs
from graphs import cli


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    m = oh.make_model(oh.make_graph(nodes, "g", inputs, outputs, list(inits)),
                      opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, dtype, dims):
    return oh.make_tensor_value_info(name, dtype, dims)


def image_and_vector() -> onnx.ModelProto:
    """An image (N, 3, 16, 16) and a metadata vector (N, 8): class scores (N, 5) and the argmax class (int64)."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((3, 5)).astype(np.float32), "w_image"),
             nh.from_array(rng.standard_normal((8, 5)).astype(np.float32), "w_meta"),
             nh.from_array(np.array([2, 3], np.int64), "hw")]
    nodes = [oh.make_node("ReduceMean", ["image", "hw"], ["pooled"], keepdims=0),
             oh.make_node("MatMul", ["pooled", "w_image"], ["a"]),
             oh.make_node("MatMul", ["meta", "w_meta"], ["b"]),
             oh.make_node("Add", ["a", "b"], ["scores"]),
             oh.make_node("Softmax", ["scores"], ["probs"], axis=-1),
             oh.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    return _model(nodes, [_vi("image", T.FLOAT, ["N", 3, 16, 16]), _vi("meta", T.FLOAT, ["N", 8])],
                  [_vi("probs", T.FLOAT, ["N", 5]), _vi("label", T.INT64, ["N"])], inits, opset=18)


def text_like() -> onnx.ModelProto:
    """token ids (int64 [batch, seq]) into a 50-row embedding, a bool mask [batch, seq], a scalar temperature."""
    rng = np.random.default_rng(1)
    inits = [nh.from_array(rng.standard_normal((50, 4)).astype(np.float32), "embedding")]
    nodes = [oh.make_node("Cast", ["ids"], ["ids32"], to=T.INT32),
             oh.make_node("Gather", ["embedding", "ids32"], ["emb"]),
             oh.make_node("Cast", ["mask"], ["maskf"], to=T.FLOAT),
             oh.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
             oh.make_node("Mul", ["emb", "mask3"], ["masked"]),
             oh.make_node("Div", ["masked", "temperature"], ["y"]),
             oh.make_node("ReduceMax", ["ids"], ["max_id"], keepdims=0)]
    inits.append(nh.from_array(np.array([-1], np.int64), "last"))
    return _model(nodes, [_vi("ids", T.INT64, ["batch", "seq"]), _vi("mask", T.BOOL, ["batch", "seq"]),
                          _vi("temperature", T.FLOAT, [])],
                  [_vi("y", T.FLOAT, ["batch", "seq", 4]), _vi("max_id", T.INT64, [])], inits)


# ---------------------------------------------------------------------------------------------------------------
# The spec


def test_defaults_read_from_the_model():
    plan = resolve_inputs(text_like())
    assert plan.names == ["ids", "mask", "temperature"]
    assert plan["ids"].shape == (BATCH_DEFAULT, DIM_DEFAULT) == plan["mask"].shape
    assert plan["temperature"].shape == ()
    # token ids index a 50-row table through a Cast: drawn from [0, 50)
    assert (plan["ids"].kind, plan["ids"].low, plan["ids"].high) == ("integers", 0, 50)
    assert plan["mask"].kind == "bool" and plan["temperature"].kind == "normal"
    feeds = plan.feeds(3, seed=0)
    assert len(feeds) == 3 and all(set(f) == {"ids", "mask", "temperature"} for f in feeds)
    ids = np.stack([f["ids"] for f in feeds])
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 10
    assert feeds[0]["mask"].dtype == bool and feeds[0]["temperature"].shape == ()
    # seeded: the same seed, the same feeds
    again = plan.feeds(3, seed=0)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(feeds, again) for k in a)


def test_a_shape_binds_the_symbols_other_inputs_share():
    plan = resolve_inputs(text_like(), [InputSpec("ids", (4, 32), "int64", range=(0, 7))])
    assert plan["mask"].shape == (4, 32) and plan.symbols == {"batch": 4, "seq": 32}
    assert (plan["ids"].low, plan["ids"].high) == (0, 7)
    assert resolve_inputs(text_like(), dims={"seq": 5})["ids"].shape == (BATCH_DEFAULT, 5)


def test_single_float_input_feeds_equal_make_inputs():
    """The one-float-input case draws exactly what make_inputs drew: recipes verify on the same inputs."""
    m = _model([oh.make_node("Relu", ["x"], ["y"])], [_vi("x", T.FLOAT, ["N", 3, 4])], [_vi("y", T.FLOAT, ["N", 3, 4])])
    feeds = resolve_inputs(m, [InputSpec("x", (1, 3, 4))]).feeds(2, seed=5)
    old = make_inputs([1, 3, 4], 2, 5)
    assert all(np.array_equal(f["x"], x) for f, x in zip(feeds, old))


def test_values_and_data(tmp_path):
    np.savez(tmp_path / "d.npz", ids=np.arange(6 * 3).reshape(6, 3) % 50,
             mask=np.ones((6, 3), bool), temperature=np.array([1.0, 2.0, 3.0], np.float32))
    plan = resolve_inputs(text_like(), [InputSpec("ids", (2, 3))])
    feeds = plan.feeds(10, data=tmp_path / "d.npz")
    # ids / mask: 6 items of [seq] in batches of 2 -> 3 feeds; temperature: rank 0, one item per feed
    assert len(feeds) == 3 and feeds[1]["ids"].tolist() == [[6, 7, 8], [9, 10, 11]]
    assert [float(f["temperature"]) for f in feeds] == [1.0, 2.0, 3.0]
    plan = resolve_inputs(text_like(), [InputSpec("mask", values=(True,)), InputSpec("temperature", values=(0.5,))])
    f = plan.feeds(1)[0]
    assert f["mask"].all() and float(f["temperature"]) == 0.5 and f["temperature"].dtype == np.float32


@pytest.mark.parametrize("spec, message", [
    (InputSpec("idz"), "input 'idz' is not an input of the model (did you mean: ids?)"),
    (InputSpec("ids", dtype="int32"), "input 'ids': dtype is int32, the model expects int64 [batch, seq]"),
    (InputSpec("ids", (2,)), "input 'ids': shape [2] has rank 1, the model expects rank 2 (int64 [batch, seq])"),
    (InputSpec("mask", range=(0, 2)), "input 'mask': range: a range is for numbers"),
])
def test_spec_errors_name_the_input(spec, message):
    with pytest.raises(UserError) as e:
        resolve_inputs(text_like(), [spec])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_fixed_dims_and_zero_size_and_every_dtype():
    dtypes = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "float16",
              "float32", "float64"]
    from graphopt.core.model_inputs import DTYPES

    ins = [_vi(f"x_{d}", DTYPES[d], [2, 3]) for d in dtypes] + [_vi("empty", T.FLOAT, ["N", 0, 3])]
    outs = [_vi(f"y_{d}", DTYPES[d], [2, 3]) for d in dtypes] + [_vi("empty_out", T.FLOAT, ["N", 0, 3])]
    nodes = [oh.make_node("Identity", [f"x_{d}"], [f"y_{d}"]) for d in dtypes]
    nodes.append(oh.make_node("Identity", ["empty"], ["empty_out"]))
    m = _model(nodes, ins, outs)
    plan = resolve_inputs(m)
    assert plan["empty"].shape == (BATCH_DEFAULT, 0, 3)
    feeds = plan.feeds(2)
    assert all(feeds[0][f"x_{d}"].dtype == np.dtype(d) for d in dtypes)
    cmp = compare_outputs(Runner(m).run(feeds), Runner(m).run(feeds), Tolerance())
    assert cmp.passed and len(cmp.outputs) == len(dtypes) + 1
    with pytest.raises(UserError, match=r"input 'x_int8': shape\[0\] is 3, the model fixes it to 2"):
        resolve_inputs(m, [InputSpec("x_int8", (3, 3))])


def test_bfloat16_runs_where_onnxruntime_runs_it():
    m = _model([oh.make_node("Identity", ["x"], ["y"])], [_vi("x", T.BFLOAT16, ["N", 4])],
               [_vi("y", T.BFLOAT16, ["N", 4])])
    feeds = resolve_inputs(m).feeds(2)
    assert feeds[0]["x"].dtype.name == "bfloat16"
    out = Runner(m).run(feeds)
    fed = np.concatenate([f["x"] for f in feeds]).astype(np.float32)
    assert out["y"].dtype.name == "bfloat16" and np.array_equal(out["y"].astype(np.float32), fed)
    assert compare_outputs(out, Runner(m).run(feeds), Tolerance()).passed


# ---------------------------------------------------------------------------------------------------------------
# Runner and errors


def test_missing_input_is_one_line_without_weight_names():
    """The weights are fed as inputs (graphopt.core.model): onnxruntime's own message lists them all; graphopt names the
    missing input only."""
    model = image_and_vector()
    big = nh.from_array(np.ones((64, 8), np.float32), "big_weight")  # over the weight threshold of graphopt.core.wire
    model.graph.initializer.append(big)
    split = split_model(model)
    assert "big_weight" in split.weights
    runner = Runner(split)
    assert runner.input_names == ["image", "meta"]
    with pytest.raises(UserError) as e:
        runner.run([{"image": np.zeros((1, 3, 16, 16), np.float32)}])
    assert str(e.value) == "input 'meta' is missing: the model expects float32 [N, 8]"
    with pytest.raises(UserError) as e:
        runner.run([{"image": np.zeros((1, 3, 16, 16), np.float32), "meta": np.zeros((1, 8), np.int64)}])
    assert str(e.value) == "input 'meta' is int64, the model expects float32 [N, 8]"
    with pytest.raises(UserError) as e:
        runner.run([{"image": np.zeros((1, 3, 8, 16), np.float32), "meta": np.zeros((1, 8), np.float32)}])
    assert "input 'image' has shape [1, 3, 8, 16], the model fixes dim 2 to 16" in str(e.value)
    assert "w_meta" not in str(e.value) and "big_weight" not in str(e.value)


def test_outputs_per_feed_keep_their_own_shapes():
    plan = resolve_inputs(text_like())
    feeds = plan.feeds(1) + resolve_inputs(text_like(), [InputSpec("ids", (1, 5))]).feeds(1)
    out = Runner(text_like()).run(feeds)
    assert out.batch_shapes["y"] == [(2, 16, 4), (1, 5, 4)]
    assert [x.shape for x in out.per_feed["y"]] == [(2, 16, 4), (1, 5, 4)]
    assert compare_outputs(out, Runner(text_like()).run(feeds), Tolerance()).passed


# ---------------------------------------------------------------------------------------------------------------
# Comparison


def test_integer_and_bool_outputs_are_compared_exactly():
    ref = {"label": np.array([3, 1, 4, 1], np.int64), "flag": np.array([True, False])}
    got = {"label": np.array([3, 1, 4, 2], np.int64), "flag": np.array([True, False])}
    loose = Tolerance(max_abs=10.0, max_rel=None, cosine=None, top1_agreement=None)
    cmp = compare_outputs(ref, got, loose)
    label, flag = cmp.outputs
    assert not label.passed and label.failed_on == ("exact",) and label.mismatches == 1 and flag.passed
    assert cmp.describe() == ("output 'label': 1 of 4 elements differ from the reference (integer outputs must "
                              "be equal)")
    got["flag"] = np.array([False, False])
    assert compare_outputs(ref, got, loose).outputs[1].failed_on == ("exact",)
    strings = {"s": np.array(["a", "b"], dtype=object)}
    assert compare_outputs(strings, {"s": np.array(["a", "c"], dtype=object)}, loose).outputs[0].mismatches == 1


def test_per_output_tolerances_and_top1_declarations():
    ref = {"scores": np.array([[1.0, 2.0], [3.0, 0.0]], np.float32), "emb": np.array([[1.0, 2.0]], np.float32)}
    got = {"scores": np.array([[1.0, 2.1], [3.0, 0.0]], np.float32), "emb": np.array([[2.0, 1.0]], np.float32)}
    tol = Tolerance(max_abs=1e-3, cosine=None, top1_agreement=1.0,
                    outputs=(OutputTolerance("scores", (("max_abs", 0.5),)), OutputTolerance("emb", (), top1=False)))
    cmp = compare_outputs(ref, got, tol)
    scores, emb = cmp.outputs
    assert scores.passed and scores.top1_agreement == 1.0
    assert emb.top1_agreement is None and emb.failed_on == ("max_abs",)  # not class scores: no top-1, max_abs global
    declared = Tolerance(max_abs=None, cosine=None, outputs=(OutputTolerance("v", (), top1=True),))
    assert compare_outputs({"v": np.array([[1.0, 2.0, 0.0]])}, {"v": np.array([[2.0, 1.0, 0.0]])},
                           declared).outputs[0].failed_on == ("top1_agreement",)
    # rank 2 with one column, or an integer dtype: no top-1 unless declared
    assert compare_outputs({"v": np.ones((3, 1), np.float32)}, {"v": np.ones((3, 1), np.float32)},
                           Tolerance()).outputs[0].top1_agreement is None


@register_pass("test_bump_one_label")
@dataclass
class BumpOneLabel(Pass):
    """Planted bug: adds 1 to the label of the first row of each batch (an integer output off in one element)."""

    def run(self, graph: gs.Graph) -> PassResult:
        out = next(t for t in graph.outputs if t.name == "label")
        raw = gs.Variable("label_raw", dtype=np.int64)
        out.inputs[0].outputs = [raw]
        zeros, first = gs.Variable("bump_zeros", dtype=np.int64), gs.Variable("bump_first", dtype=np.int64)
        graph.nodes += [
            gs.Node("Sub", inputs=[raw, raw], outputs=[zeros]),
            gs.Node("ScatterElements", attrs={"axis": 0}, outputs=[first],
                    inputs=[zeros, gs.Constant("bump_at", np.array([0], np.int64)),
                            gs.Constant("bump_by", np.array([1], np.int64))]),
            gs.Node("Add", inputs=[raw, first], outputs=[out])]
        return PassResult(True, {})


def _write(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_apply_and_verify_a_two_input_model(tmp_path, capsys):
    src = _write(tmp_path, image_and_vector())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {onnx: m.onnx}\ninputs:\n  - {name: meta, shape: [4, 8], range: [-1, 1]}\n"
                      "passes: [fold_constants, softmax_transpose]\natc: {batch_sizes: [1, 8]}\n")
    code, out, err = cli(capsys, "apply", recipe, "-o", tmp_path / "run")
    assert code == 0, err
    import json

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [i["name"] for i in report["inputs"]] == ["image", "meta"]
    assert report["inputs"][0]["shape"] == [4, 3, 16, 16] and report["inputs"][1]["range"] == [-1, 1]
    outputs = {o["name"]: o for o in report["final_verify"]["outputs"]}
    assert outputs["label"]["mismatches"] == 0 and outputs["probs"]["top1_agreement"] == 1.0
    atc = (tmp_path / "run" / "atc.sh").read_text()
    assert "--input_format=ND '--input_shape=image:8,3,16,16;meta:8,8'" in atc
    assert "'--input_shape=image:1,3,16,16;meta:1,8'" in atc
    code, out, err = cli(capsys, "verify", src, tmp_path / "run" / "model.onnx")
    assert code == 0, err
    assert "label: integer output, all 4 elements equal  ok" in out
    code, out, err = cli(capsys, "verify", src, tmp_path / "run" / "model.onnx", "--input", "meta:3,8",
                         "--range", "meta:0,1")
    assert code == 0 and "label: integer output, all 6 elements equal" in out


def test_a_pass_changing_one_integer_element_fails(tmp_path, capsys):
    _write(tmp_path, image_and_vector())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {onnx: m.onnx}\npasses: [test_bump_one_label]\n"
                      "verify: {tolerance: {max_abs: 100, cosine: null, top1_agreement: null}}\n")
    code, _, err = cli(capsys, "apply", recipe, "-o", tmp_path / "run")
    assert code == 1 and len(err) == 1
    assert "pass test_bump_one_label (passes[0]) broke numerics: output 'label': 2 of 4 elements differ from the " \
           "graph before it (integer outputs must be equal)" in err[0], err
    # graphopt verify says the same of the two models (exit 1)
    from graphopt.testing import run_pass

    bumped, _ = run_pass(image_and_vector(), BumpOneLabel())
    b = _write(tmp_path, bumped, "b.onnx")
    code, out, _ = cli(capsys, "verify", tmp_path / "m.onnx", b, "--max-abs", "100")
    assert code == 1 and "output 'label': 2 of 4 elements differ from model A (integer outputs must be equal)" in out


def test_verify_fp16_scalar_and_zero_size_models(tmp_path, capsys):
    fp16 = _model([oh.make_node("Softmax", ["x"], ["y"], axis=-1)], [_vi("x", T.FLOAT16, ["N", 2, 3, 4])],
                  [_vi("y", T.FLOAT16, ["N", 2, 3, 4])], opset=13)
    p = _write(tmp_path, fp16, "fp16.onnx")
    code, out, err = cli(capsys, "verify", p, p)
    assert code == 0, err
    scalar = _model([oh.make_node("Mul", ["x", "s"], ["y"]), oh.make_node("Shape", ["z"], ["zs"])],
                    [_vi("x", T.FLOAT, ["N", 4]), _vi("s", T.FLOAT, []), _vi("z", T.FLOAT, [0, 3])],
                    [_vi("y", T.FLOAT, ["N", 4]), _vi("zs", T.INT64, [2])])
    p = _write(tmp_path, scalar, "scalar.onnx")
    code, out, err = cli(capsys, "verify", p, p, "--input", "s::float32", "--input", "x:3,4")
    assert code == 0, err
    assert "zs: integer output" in out
    # apply on it too: a scalar and a zero-size input verify
    (tmp_path / "r.yaml").write_text("model: {onnx: scalar.onnx}\npasses: [fold_constants]\n")
    assert cli(capsys, "apply", tmp_path / "r.yaml", "-o", tmp_path / "run")[0] == 0


def test_cli_input_errors_are_one_line(tmp_path, capsys):
    p = _write(tmp_path, text_like())
    for args, message in [
        (["--input", "ids:2,4:int32"], "--input ids:2,4:int32: dtype is int32, the model expects input 'ids': "
                                       "int64 [batch, seq]"),
        (["--input", "idz:2,4"], "input 'idz' is not an input of the model (did you mean: ids?)"),
        (["--input", "ids:2,x"], "--input 'ids:2,x': the shape must be comma-separated integers"),
        (["--input", "ids:2,4:int46"], "unknown dtype 'int46'"),
        (["--range", "ids:0"], "--range 'ids:0': expected NAME:LO,HI"),
        (["--data", tmp_path / "no.npz"], "no such file"),
    ]:
        code, _, err = cli(capsys, "verify", p, p, *args)
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)


def test_cli_data_npz(tmp_path, capsys):
    p = _write(tmp_path, text_like())
    np.savez(tmp_path / "d.npz", ids=np.zeros((4, 6), np.int64), mask=np.ones((4, 6), bool),
             temperature=np.ones(2, np.float32))
    code, out, err = cli(capsys, "verify", p, p, "--data", tmp_path / "d.npz")
    assert code == 0, err
    np.savez(tmp_path / "bad.npz", ids=np.zeros((4, 6), np.float32))
    code, _, err = cli(capsys, "verify", p, p, "--data", tmp_path / "bad.npz")
    assert code == 2 and "input 'ids' data is float32, the model expects int64 [batch, seq]" in err[0]


def test_testing_helpers_take_several_inputs():
    from graphopt.passes.fold_constants import FoldConstants

    model = image_and_vector()
    cmp = compare_models(model, model)
    assert cmp.passed and [o.name for o in cmp.outputs] == ["probs", "label"]
    assert_pass_verified(text_like(), FoldConstants(), expect_changed=False)


def test_model_inputs_leave_out_initializers():
    model = image_and_vector()
    model.graph.input.append(oh.make_tensor_value_info("w_meta", T.FLOAT, [8, 5]))  # IR < 4 style
    assert [m.name for m in model_inputs(model)] == ["image", "meta"]


# ---------------------------------------------------------------------------------------------------------------
# graphopt diff: every input of any dtype, integer tensors exactly


def test_diff_a_two_input_image_and_vector_model(tmp_path, capsys):
    import json

    a = _write(tmp_path, image_and_vector(), "a.onnx")
    changed = image_and_vector()
    w = next(i for i in changed.graph.initializer if i.name == "w_meta")
    w.CopyFrom(nh.from_array(nh.to_array(w) + np.float32(0.05), "w_meta"))
    b = _write(tmp_path, changed, "b.onnx")
    code, out, err = cli(capsys, "diff", a, a, "--plot", "", "--json", tmp_path / "same.json")
    assert code == 0 and "no shared tensor is outside tolerance" in out, (out, err)
    data = json.loads((tmp_path / "same.json").read_text())
    assert [(i["name"], i["shape"]) for i in data["inputs"]] == [("image", [2, 3, 16, 16]), ("meta", [2, 8])]
    label = next(t for t in data["tensors"] if t["name"] == "label")
    assert label["exact"] == "integer" and label["mismatches"] == 0 and label["passed"]
    # several --input flags, and the old --shape for the first input
    code, out, err = cli(capsys, "diff", a, b, "--plot", "", "--input", "image:3,3,16,16", "--input", "meta:3,8",
                         "--range", "meta:-1,1", "--samples", "2")
    assert code == 1, (out, err)
    assert "first divergent tensor 'b' from MatMul node" in out
    code, out, err = cli(capsys, "diff", a, a, "--plot", "", "--shape", "5,3,16,16")
    assert code == 0, err
    # real data: one array per input name, first axis the items
    np.savez(tmp_path / "d.npz", image=np.ones((4, 3, 16, 16), np.float32), meta=np.zeros((4, 8), np.float32))
    code, out, err = cli(capsys, "diff", a, b, "--plot", "", "--data", tmp_path / "d.npz")
    assert code == 0, (out, err)  # meta all zero: the changed w_meta contributes nothing
    code, _, err = cli(capsys, "diff", a, b, "--plot", "", "--input", "meta:2,8:int64")
    assert code == 2 and err == ["graphopt: error: --input meta:2,8:int64: dtype is int64, the model expects "
                                 "input 'meta': float32 [N, 8]"]


def _ids_model(shift: bool) -> onnx.ModelProto:
    """token ids (int64 [batch, seq]) and features x (float [batch, 4]): the largest id per row (an integer
    intermediate), cast to float and added to x scaled by 1e-6; ``shift`` lowers the ids by 1 before the max."""
    inits = [nh.from_array(np.array([1], np.int64), "one"), nh.from_array(np.array(1e-6, np.float32), "tiny"),
             nh.from_array(np.array([1], np.int64), "axis")]
    first = [oh.make_node("Sub", ["ids", "one"], ["ids_shifted"])] if shift else []
    nodes = first + [
        oh.make_node("ReduceMax", ["ids_shifted" if shift else "ids"], ["largest"], keepdims=0, axes=[1]),
        oh.make_node("Cast", ["largest"], ["largest_f"], to=T.FLOAT),
        oh.make_node("Mul", ["largest_f", "tiny"], ["small"]),
        oh.make_node("Unsqueeze", ["small", "axis"], ["small2"]),
        oh.make_node("Add", ["x", "small2"], ["y"])]
    return _model(nodes, [_vi("ids", T.INT64, ["batch", "seq"]), _vi("x", T.FLOAT, ["batch", 4])],
                  [_vi("y", T.FLOAT, ["batch", 4])], inits, opset=13)


def test_diff_an_integer_intermediate_that_differs_is_divergent(tmp_path, capsys):
    a, b = _write(tmp_path, _ids_model(False), "a.onnx"), _write(tmp_path, _ids_model(True), "b.onnx")
    # float tolerances loose enough for every float tensor here (the max id off by 1, y by 1e-6)
    loose = ["--max-abs", "10", "--cosine", "0.9", "--range", "ids:10,20", "--plot", ""]
    code, out, err = cli(capsys, "diff", a, b, *loose, "--json", tmp_path / "d.json")
    assert code == 1, (out, err)
    assert "1 outside tolerance; first divergent tensor 'largest' from ReduceMax node" in out
    assert "'largest' from ReduceMax node '#1': 2 element(s) differ (max_abs=1; integer tensors must be equal)" \
        in out
    import json

    tensors = {t["name"]: t for t in json.loads((tmp_path / "d.json").read_text())["tensors"]}
    assert tensors["largest"]["mismatches"] == 2 and tensors["largest"]["failed_on"] == ["exact"]
    assert tensors["largest_f"]["passed"] and tensors["y"]["passed"]
    assert cli(capsys, "diff", a, a, *loose)[0] == 0


def test_precision_of_a_two_input_image_and_vector_model(tmp_path, capsys):
    """graphopt precision feeds both inputs (it fed the first only: onnxruntime refused the run), from the model,
    from --input / --range, from a recipe's inputs: and from an .npz; the integer label output is compared
    exactly."""
    import json

    src = _write(tmp_path, image_and_vector())
    code, out, err = cli(capsys, "precision", src, "-o", tmp_path / "p1", "--samples", "6", "--node-trials", "2",
                         "--input", "meta:2,8", "--range", "meta:-1,1")
    assert code == 0, err
    report = json.loads((tmp_path / "p1" / "precision.json").read_text())
    assert [(i["name"], i["shape"]) for i in report["model"]["inputs"]] == [("image", [6, 3, 16, 16]),
                                                                             ("meta", [6, 8])]
    assert report["model"]["inputs"][1]["range"] == [-1, 1] and report["calibration"]["items"] == 6
    (tmp_path / "r.yaml").write_text("model: {onnx: m.onnx}\ninputs:\n  - {name: meta, range: [0, 1]}\n"
                                     "passes: [fold_constants]\n")
    code, out, err = cli(capsys, "precision", tmp_path / "r.yaml", "-o", tmp_path / "p2", "--samples", "3",
                         "--node-trials", "1")
    assert code == 0, err
    report = json.loads((tmp_path / "p2" / "precision.json").read_text())
    assert report["model"]["inputs"][1]["range"] == [0, 1] and report["calibration"]["items"] == 3
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", image=rng.standard_normal((5, 3, 16, 16)).astype(np.float32),
             meta=rng.standard_normal((5, 8)).astype(np.float32))
    code, out, err = cli(capsys, "precision", src, "-o", tmp_path / "p3", "--data", tmp_path / "cal.npz",
                         "--node-trials", "1")
    assert code == 0, err
    report = json.loads((tmp_path / "p3" / "precision.json").read_text())
    assert report["calibration"]["items"] == 5 and report["calibration"]["warning"] is None
    # a folder of images feeds one input: for two, an .npz (one line)
    (tmp_path / "imgs").mkdir()
    code, out, err = cli(capsys, "precision", src, "-o", tmp_path / "p4", "--data", tmp_path / "imgs",
                         "--mean", "0", "--std", "1")
    assert code == 2 and len(err) == 1 and "give an .npz with one array per input name" in err[0]
