"""Every pass over every ONNX backend node test case onnxruntime runs (about 1350; ``tests/node_corpus.py``),
checked by the harness itself: ``onnx.checker`` (the strictest level the input passes), onnxruntime loads and runs
the result on the case's own feeds, and its outputs equal the input model's (exact for integers, bools and
strings; floats within ``node_corpus.ATOL`` / ``RTOL``). A pass that reports no change must leave the model's
nodes, initializers and subgraphs as they were.

One sweep (a spawned process per core) feeds one test per pass configuration, so a pass's failures show under
its own name: every failure is listed, one line each. A per-pass table (models, unchanged, changed and verified,
clean errors, crash, invalid, changed outputs, unreported edits) is printed at the end of the session and written
to ``runs/node-corpus-table.md``. Reproduce: ``.venv/bin/python -m pytest -q tests/test_node_corpus.py``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import node_corpus as nc
from graphopt.core.errors import PassError, UserError
from graphopt.core import pass_infra
from graphopt.core.pass_infra import Pass, PassResult, all_passes

REPO = Path(__file__).resolve().parent.parent


def _builtin_names() -> list[str]:
    """The registry without the test-only passes other test modules register (a spawned worker's view)."""
    roots = (REPO / "tests", REPO / "examples")
    names = []
    for name, cls in all_passes().items():
        module = sys.modules.get(cls.__module__)
        file = Path(getattr(module, "__file__", "") or "").resolve()
        if not any(root in file.parents for root in roots):
            names.append(name)
    return names


CONFIGS = nc.pass_configs(_builtin_names())
LABELS = [c.label for c in CONFIGS]


@pytest.fixture(scope="module")
def node_sweep(request):
    """Run the sweep once; print and write the table when the module is done."""
    rows, index, wall = nc.sweep(CONFIGS)
    lines = nc.table_lines(rows, LABELS)
    variants = len({r.model for r in rows if r.model.endswith(nc.DYNAMIC_SUFFIX)})
    summary = (f"{len(index['kept'])} of {index['collected']} node test cases (onnxruntime loads and runs them), "
               f"and {variants} of them again with a symbolic first dim (<name>{nc.DYNAMIC_SUFFIX}); "
               f"{len(CONFIGS)} pass configurations, {wall:.0f} s wall on {os.cpu_count()} processes")
    out = REPO / "runs" / "node-corpus-table.md"
    failures = [f"{r.config}\t{r.model}\t{r.category}\t{r.detail}" for r in rows if r.category in nc.FAILURES]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join([summary, "", *lines]) + "\n")
        # Every failure, tab-separated (pass, model, category, detail): what the owner of a pass works through.
        out.with_name("node-corpus-failures.tsv").write_text("".join(f + "\n" for f in failures))
    except OSError:
        pass

    class Summary:
        @staticmethod
        def pytest_terminal_summary(terminalreporter):
            terminalreporter.write_sep("=", "differential node corpus: pass x ONNX node test cases")
            terminalreporter.write_line(summary)
            for line in lines:
                terminalreporter.write_line(line)
            terminalreporter.write_line(f"(also in {out})")

    request.config.pluginmanager.register(Summary(), "graphopt_node_corpus_table")
    by_config = defaultdict(list)
    for r in rows:
        by_config[r.config].append(r)
    return by_config


@pytest.mark.parametrize("label", LABELS)
def test_pass_never_breaks_a_node_model(node_sweep, label):
    rows = node_sweep[label]
    fixed = [r for r in rows if not r.model.endswith(nc.DYNAMIC_SUFFIX)]
    assert len(fixed) > 1000, "the corpus lost most of its models"
    assert len(rows) - len(fixed) > 1000, "the symbolic-first-dim variants are missing"
    failures = [r for r in rows if r.category in nc.FAILURES]
    assert not failures, f"{label}: {len(failures)} failure(s):\n" + "\n".join(
        f"  {r.model}: {r.category}: {r.detail}" for r in failures)


def test_symbolic_first_dim_variant():
    """The variant makes every input's first dim the symbol N and the outputs' dims unknown, nothing else, and
    stays a valid model."""
    variant = nc.symbolic_first_dim(ADD)
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in variant.graph.input]
    assert dims == [["N"], ["N"]]
    out = variant.graph.output[0].type.tensor_type
    assert len(out.shape.dim) == 1 and not out.shape.dim[0].HasField("dim_value") and not out.shape.dim[0].dim_param
    onnx.checker.check_model(variant, full_check=True)
    assert variant.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [n.op_type for n in variant.graph.node] == ["Add"]
    assert ADD.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    scalar = oh.make_model(oh.make_graph([oh.make_node("Neg", ["x"], ["y"])], "g",
                                         [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [])],
                                         [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])]))
    assert nc.symbolic_first_dim(scalar) is None


def test_every_registered_pass_is_swept():
    assert {c.pass_name for c in CONFIGS} == set(_builtin_names())
    assert {"simplify", "fold_constants", "insert_fusion_breaker", "gelu_precision"} <= set(_builtin_names())


# ---------------------------------------------------------------------------------------------------------------
# The harness's own judgement: each category must be reachable, or a broken harness would pass everything.


def _case(model: onnx.ModelProto, feeds: dict) -> dict:
    session = nc._session(model.SerializeToString())
    return {"feeds": feeds, "ref": nc._run(session, feeds), "check": "full"}


ADD = oh.make_model(oh.make_graph(
    [oh.make_node("Add", ["x", "y"], ["z"], name="add")], "g",
    [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
     oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    [oh.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2])]), opset_imports=[oh.make_opsetid("", 17)],
    ir_version=8)
FEEDS = {"x": np.array([1.0, 2.0], np.float32), "y": np.array([3.0, -4.0], np.float32)}


def _add_to_sub(graph):
    graph.nodes[0].op = "Sub"
    return PassResult(True)


def _add_to_sub_quietly(graph):
    graph.nodes[0].op = "Sub"
    return PassResult(False)


def _raw_error(graph):
    raise KeyError("boom")


def _clean_error(graph):
    raise UserError("cannot do that here")


def _bad_attr(graph):
    graph.nodes[0].attrs["nonsense"] = 3
    return PassResult(True)


TEST_PASSES = {"test_nc_sub": _add_to_sub, "test_nc_sub_quiet": _add_to_sub_quietly, "test_nc_raw": _raw_error,
               "test_nc_clean": _clean_error, "test_nc_bad_attr": _bad_attr}


@pytest.mark.parametrize("pass_name, category", [
    ("infer_shapes", "unchanged"), ("insert_fusion_breaker", "verified"), ("test_nc_sub", "changed_outputs"),
    ("test_nc_sub_quiet", "unreported_edit"), ("test_nc_raw", "crash"), ("test_nc_clean", "clean_error"),
    ("test_nc_bad_attr", "invalid")])
def test_harness_sorts_each_outcome(pass_name, category, monkeypatch):
    if pass_name in TEST_PASSES:  # registered for this test only: the registry is what other modules list
        run = TEST_PASSES[pass_name]
        cls = dataclasses.dataclass(type(pass_name, (Pass,), {"run": lambda self, graph: run(graph)}))
        cls.name = pass_name
        monkeypatch.setitem(pass_infra._REGISTRY, pass_name, cls)
    args = {"path": ["Add"], "op": "Mul"} if pass_name == "insert_fusion_breaker" else {}
    got, detail = nc.classify(nc.Config(pass_name, pass_name, args), ADD.SerializeToString(), _case(ADD, FEEDS))
    assert got == category, detail


def test_pipeline_wrapper_of_a_raw_exception_is_a_crash_not_a_clean_error():
    wrapped = PassError("pass x (passes[0]) raised KeyError: 'k'")
    wrapped.__cause__ = KeyError("k")
    assert nc._classify_error(wrapped)[0] == "crash"
    assert nc._classify_error(PassError("pass x: a reason the pass gives on purpose"))[0] == "clean_error"
    assert nc._classify_error(UserError("bad recipe"))[0] == "clean_error"


@pytest.mark.parametrize("ref, got, same", [
    (np.array([1.0, np.nan], np.float32), np.array([1.0 + 5e-6, np.nan], np.float32), True),
    (np.array([1.0, np.nan], np.float32), np.array([1.0, 0.0], np.float32), False),
    (np.array([100.0], np.float32), np.array([100.02], np.float32), False),  # 2e-4 relative > 1e-4
    (np.array([np.inf], np.float32), np.array([-np.inf], np.float32), False),
    (np.array([1.0], np.float16), np.array([1.001], np.float16), True),
    (np.array([3], np.int64), np.array([3], np.int32), False),
    (np.array([3, 4], np.int64), np.array([3, 5], np.int64), False),
    (np.array(["a"], object), np.array(["a"], object), True),
    (np.array(["a"], object), np.array(["b"], object), False),
    ([np.zeros(2, np.float32)], [np.zeros(2, np.float32)], True),
    ([np.zeros(2, np.float32)], [], False),
    (None, None, True),
    (None, np.zeros(1), False),
])
def test_output_comparison(ref, got, same):
    assert (nc.outputs_equal(ref, got, "y") is None) == same


# ---------------------------------------------------------------------------------------------------------------
# The cache: ONNX value protos, never pickles; a value is stored only if it reads back exactly as it was.


@pytest.mark.parametrize("value", [
    np.array([1.5, np.nan], np.float32), np.array([[1, 2]], np.float16), np.array([True, False]),
    np.array([2**63 - 1], np.int64), np.array(["a", "\u00e9"], object), np.zeros((0, 2), object),
    np.array([1.5, -2], onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)),
    [], [np.zeros(2, np.int64), np.ones(1, np.int64)], [[np.ones(1, np.float32)]], None, np.int32(3),
    {1: np.ones(1, np.float32)}, oh.make_tensor("t", onnx.TensorProto.FLOAT8E4M3FN, [2], [1.0, 2.0])],
    ids=lambda v: type(v).__name__ + str(getattr(v, "dtype", "")))
def test_cache_values_read_back_exactly(value, tmp_path):
    entries = nc._store(tmp_path, "input", {"v": value})
    assert [p.name for p in tmp_path.iterdir()] == ["input_0.pb"]
    back = nc._load_values(tmp_path, "input", entries)["v"]
    assert nc._same(value, back)
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and back.shape == value.shape


@pytest.mark.parametrize("value", [np.array([b"x"], object), np.array(["a"]), {"k": np.ones(1, np.float32)}, 3.0])
def test_cache_refuses_a_value_that_would_not_read_back(value, tmp_path):
    with pytest.raises(ValueError):
        nc._store(tmp_path, "input", {"v": value})


def test_cache_module_never_unpickles():
    text = (REPO / "tests" / "node_corpus.py").read_text()
    assert "import pickle" not in text and "pickle.load" not in text
