"""merge_transposes: composed, cancelled, identity perms, shared first Transpose, graph outputs, chains."""
from __future__ import annotations

from graphopt.core.ir import op_counts
from graphopt.core.pass_infra import get_pass
from graphopt.testing import STRICT_FP32, assert_pass_unchanged, assert_pass_verified, model_from_text

MergeTransposes = get_pass("merge_transposes")


def _model(body: str, out: str = "float[N, 5, 4, 3] y") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 4, 5] x) => ({out}) {{
        {body}
    }}"""


def _perms(model) -> list[list[int]]:
    return [list(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]


def test_pair_is_composed_into_one_transpose():
    body = "a = Relu(x)\n t = Transpose<perm=[0, 2, 3, 1]>(a)\n u = Transpose<perm=[0, 2, 1, 3]>(t)\n y = Relu(u)"
    out, result = assert_pass_verified(model_from_text(_model(body, "float[N, 5, 4, 3] y")), MergeTransposes(),
                                       tolerance=STRICT_FP32, shape=[2, 3, 4, 5])
    assert result.stats["rewritten"] == 1
    assert op_counts(out) == {"Relu": 2, "Transpose": 1}
    assert _perms(out) == [[0, 3, 2, 1]]


def test_cancelling_pair_is_removed_and_a_graph_output_keeps_its_name():
    body = "t = Transpose<perm=[0, 2, 3, 1]>(x)\n y = Transpose<perm=[0, 3, 1, 2]>(t)"
    out, result = assert_pass_verified(model_from_text(_model(body, "float[N, 3, 4, 5] y")), MergeTransposes(),
                                       shape=[2, 3, 4, 5])
    assert result.stats["rewritten"] == 1
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [("Identity", ["x"], ["y"])]


def test_default_perms_cancel_and_identity_perm_goes():
    body = "t = Transpose(x)\n u = Transpose(t)\n v = Transpose<perm=[0, 1, 2, 3]>(u)\n y = Neg(v)"
    out, result = assert_pass_verified(model_from_text(_model(body, "float[N, 3, 4, 5] y")), MergeTransposes(),
                                       shape=[2, 3, 4, 5])
    assert result.stats["rewritten"] == 2 and result.stats["identity_perms"] == 1
    assert [n.op_type for n in out.graph.node] == ["Neg"]


def test_a_chain_of_three_becomes_one():
    body = ("t = Transpose<perm=[0, 2, 3, 1]>(x)\n u = Transpose<perm=[0, 2, 3, 1]>(t)\n"
            " v = Transpose<perm=[0, 2, 1, 3]>(u)\n y = Neg(v)")
    out, result = assert_pass_verified(model_from_text(_model(body, "float[N, 3, 5, 4] y")), MergeTransposes(),
                                       shape=[2, 3, 4, 5])
    assert op_counts(out) == {"Neg": 1, "Transpose": 1}
    assert _perms(out) == [[0, 1, 3, 2]]


def test_a_first_transpose_read_elsewhere_is_left_with_the_reason():
    body = ("t = Transpose<perm=[0, 2, 3, 1]>(x)\n u = Transpose<perm=[0, 3, 1, 2]>(t)\n y = Neg(u)\n"
            " z = Abs(t)")
    text = _model(body, "float[N, 3, 4, 5] y, float[N, 4, 5, 3] z")
    result = assert_pass_unchanged(model_from_text(text), MergeTransposes())
    assert result.stats["skipped"] == {"first Transpose read elsewhere": 1}


def test_a_first_transpose_read_inside_a_subgraph_is_read_elsewhere():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3] x, bool c) => (float[2, 3] y, float[3, 2] z) {
        t = Transpose<perm=[1, 0]>(x)
        y = Transpose<perm=[1, 0]>(t)
        z = If(c) <then_branch = a () => (float[3, 2] o) { o = Neg(t) },
                   else_branch = b () => (float[3, 2] o2) { o2 = Abs(t) }>
    }"""
    result = assert_pass_unchanged(model_from_text(text), MergeTransposes())
    assert result.stats["skipped"] == {"first Transpose read elsewhere": 1}


def test_other_graphs_are_unchanged():
    body = "t = Transpose<perm=[0, 2, 3, 1]>(x)\n u = Relu(t)\n y = Transpose<perm=[0, 2, 1, 3]>(u)"
    result = assert_pass_unchanged(model_from_text(_model(body, "float[N, 5, 4, 3] y")), MergeTransposes())
    assert result.stats == {"rewritten": 0, "identity_perms": 0, "skipped": {}}
