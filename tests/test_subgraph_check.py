"""``graphopt.core.subgraph_check``: a rewrite's replacement against the nodes it replaces, run in onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

from graphopt.core.ir import to_graph
from graphopt.core.subgraph_check import Subgraph, check_replacement
from graphopt.core.tolerance import Tolerance
from graphopt.testing import model_from_text


def pair(body: str, dtype: str = "float", dims: str = "N, 4", observed: tuple[str, ...] = ()):
    """``body`` computes ``y`` (the original, ``observed`` its tensors to evaluate) and ``z`` (the replacement) from
    ``x``: the two as subgraphs."""
    graph = to_graph(model_from_text(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g ({dtype}[{dims}] x) => ({dtype}[{dims}] y, {dtype}[{dims}] z) {{
        {body}
    }}"""))
    tensors = graph.tensors()

    def cut(name: str, observed: tuple[str, ...] = ()) -> Subgraph:
        nodes = []
        todo = [tensors[name]]
        while todo:  # the nodes ``name`` is computed from, back to x
            t = todo.pop()
            for node in t.inputs:
                if all(node is not n for n in nodes):
                    nodes.append(node)
                    todo.extend(node.inputs)
        return Subgraph(graph, nodes, [tensors["x"]], [tensors[name]], observed=[tensors[o] for o in observed])

    return cut("y", observed), cut("z")


def test_agreeing_pair_at_several_batch_sizes():
    before, after = pair("n = Neg(x)\n y = Neg(n)\n z = Identity(x)")
    agreement = check_replacement(before, after, [{"x": [1, 4]}, {"x": [3, 4]}])
    assert agreement and agreement.reason is None and agreement.error is None


def test_disagreeing_pair_says_which_output_and_how_far():
    before, after = pair("y = Relu(x)\n z = Abs(x)")
    agreement = check_replacement(before, after, [{"x": [2, 4]}])
    assert not agreement and agreement.error is None
    assert agreement.reason.startswith("output 'y': max_abs=")
    assert "outside tolerance on max_abs" in agreement.reason and "x [2, 4]" in agreement.reason


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint32"])
def test_integer_inputs_are_compared_exactly(dtype):
    before, after = pair("y = Add(x, x)\n two = Constant<value = " + dtype + "[1] {2}>()\n z = Mul(x, two)",
                         dtype=dtype, dims="2, 3")
    assert check_replacement(before, after)  # static shapes: one run at them
    before, after = pair("y = Add(x, x)\n z = Identity(x)", dtype=dtype, dims="2, 3")
    agreement = check_replacement(before, after)
    assert not agreement and "elements differ from the original" in agreement.reason


def test_float_rounding_passes_a_stated_tolerance_but_not_the_exact_default():
    before, after = pair("three = Constant<value = float[1] {3.0}>()\n y = Div(x, three)\n"
                         "third = Constant<value = float[1] {0.33333334}>()\n z = Mul(x, third)", dims="64, 64")
    assert not check_replacement(before, after)
    assert check_replacement(before, after, tolerance=Tolerance(max_abs=1e-5, max_rel=None, cosine=None,
                                                                top1_agreement=None))


def test_a_replacement_onnxruntime_cannot_run_is_a_reason_not_a_crash():
    before, after = pair("y = Identity(x)\n shape = Constant<value = int64[2] {3, 4}>()\n z = Reshape(x, shape)")
    agreement = check_replacement(before, after, [{"x": [2, 4]}])
    assert not agreement and agreement.error is not None
    assert agreement.reason.startswith("onnxruntime cannot evaluate the replacement with inputs shaped x [2, 4]: ")


def test_observed_tensors_are_evaluated_not_compared():
    before, after = pair("n = Neg(x)\n y = Neg(n)\n z = Identity(x)", observed=("n",))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    values = before.run({"x": x})
    assert np.array_equal(values["n"], -x) and np.array_equal(values["y"], x)
    assert check_replacement(before, after, [{"x": [2, 4]}])
