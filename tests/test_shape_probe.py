"""Shape inference by probing (``graphopt.core.shape_probe``): ONNX's inference at two concrete sizes of the symbolic
dims. It must agree with onnxruntime's symbolic inference wherever that one knows a shape, name the dims that
follow a symbol, and give up (None: the caller falls back on symbolic inference) rather than guess."""
from __future__ import annotations

import onnx
import pytest
from corpus import ZOO, export_zoo_model

from graphopt.core import ir, onnx_files, shape_probe
from graphopt.core.shape_probe import probe_infer
from graphopt.core.shapes import _infer_uncached, infer_shapes
from graphopt.testing import model_from_text


def _shapes(model) -> dict[str, tuple[list, int]]:
    g = model.graph
    return {v.name: ([d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim],
                     v.type.tensor_type.elem_type) for v in (*g.value_info, *g.output)}


# A ViT's cls token at opset 11, as torch exports `cls.expand(B, -1, -1)` and `x.reshape(B, N, -1)`: the Expand
# target goes through Equal/Where (which ONNX's own inference does not evaluate), the Reshape target through
# Shape/Gather/Concat.
CLS_TOKEN = """
<ir_version: 7, opset_import: ["" : 11]>
g (float[N, 4, 8] x, float[1, 1, 8] cls) => (float[N, 5, 8] y, float[M, 8] flat) {
    s = Shape(x)
    i0 = Constant<value = int64 {0}>()
    b = Gather<axis = 0>(s, i0)
    bu = Unsqueeze<axes = [0]>(b)
    minus = Constant<value = int64[2] {-1, -1}>()
    target = Concat<axis = 0>(bu, minus)
    ones = Constant<value = int64[3] {1, 1, 1}>()
    neg = Constant<value = int64[3] {-1, -1, -1}>()
    is_neg = Equal(target, neg)
    expand_to = Where(is_neg, ones, target)
    c = Expand(cls, expand_to)
    y = Concat<axis = 1>(c, x)
    minus1 = Constant<value = int64[1] {-1}>()
    eight = Constant<value = int64[1] {8}>()
    flat_to = Concat<axis = 0>(minus1, eight)
    flat = Reshape(x, flat_to)
}"""


def test_cls_token_expand_and_reshape_keep_the_batch_symbol():
    shapes = _shapes(probe_infer(model_from_text(CLS_TOKEN)))
    assert shapes["c"] == (["N", 1, 8], 1)
    assert shapes["y"] == (["N", 5, 8], 1)
    assert shapes["flat"] == (["4*N", 8], 1)  # a multiple of the symbol is named as one
    assert shapes["target"] == ([3], 7)
    # ONNX's own inference, without probing, loses the Expand (what the probe is for).
    plain = _shapes(onnx.shape_inference.infer_shapes(model_from_text(CLS_TOKEN), data_prop=True))
    assert "c" not in plain or "N" not in plain["c"][0]


DYNAMIC_HW = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 3, H, W] x) => (float[N, 3, 1, 1] y) {
    a = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(x)
    b = Relu(a)
    c = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(b)
    y = GlobalAveragePool(c)
}"""


def test_downsampled_dims_stay_symbolic_and_equal_dims_share_a_name():
    shapes = _shapes(probe_infer(model_from_text(DYNAMIC_HW)))
    n, ch, h, w = shapes["a"][0]
    assert (n, ch) == ("N", 3) and isinstance(h, str) and isinstance(w, str) and h != w
    assert shapes["b"][0] == shapes["a"][0]  # the same dims: the same names
    assert all(isinstance(d, str) for d in shapes["c"][0][2:]) and shapes["c"][0][2:] != [h, w]
    assert shapes["y"][0] == ["N", 3, 1, 1]  # static whatever the size


@pytest.mark.parametrize("text, why", [
    ("""<ir_version: 8, opset_import: ["" : 13, "custom" : 1]>
        g (float[N, 8] x) => (float[N, 8] y) { a = custom.Mystery(x)  y = Relu(a) }""", "a custom op"),
    ("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 3] x) => (float[4, M] y) { t = Constant<value = int64[2] {4, -1}>()  y = Reshape(x, t) }""",
     "a reshape the probe sizes do not divide"),
    ("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 8] x, bool c) => (float[N, 8] y) {
            y = If(c) <then_branch = t () => (float[N, 8] a) { a = Relu(x) },
                       else_branch = e () => (float[N, 8] b) { b = Sigmoid(x) }>
        }""", "a subgraph"),
])
def test_what_it_cannot_shape_falls_back(text, why):
    model = onnx.parser.parse_model(text)
    assert probe_infer(model) is None, why


@pytest.mark.parametrize("name", [m.name for m in ZOO])
def test_agrees_with_symbolic_inference_on_the_zoo(name, monkeypatch):
    """Every tensor the fallback (onnxruntime's symbolic inference) shapes gets the same type and static dims from
    probing, and its batch dims stay the batch; probing shapes every model of the zoo (none falls back)."""
    spec = next(m for m in ZOO if m.name == name)
    model = ir.shape_model(ir.to_graph(onnx_files.load_model(export_zoo_model(spec))))
    probed = probe_infer(model)
    assert probed is not None
    monkeypatch.setattr(shape_probe, "probe_infer", lambda m: None)
    symbolic = _infer_uncached(model)  # onnxruntime's symbolic inference, completed by ONNX's
    p, s = _shapes(probed), _shapes(symbolic)
    compared = 0
    for tensor, (dims, dtype) in s.items():
        if not dims and tensor not in p:
            continue  # symbolic inference typed nothing here either
        assert tensor in p, tensor
        pdims, pdtype = p[tensor]
        assert pdtype == dtype and len(pdims) == len(dims), (tensor, dims, pdims)
        for sd, pd in zip(dims, pdims):
            if isinstance(sd, int):
                assert pd == sd, (tensor, dims, pdims)
            elif sd == "batch":
                assert pd == "batch", (tensor, dims, pdims)
        compared += 1
    assert compared >= 0.9 * len([o for n in model.graph.node for o in n.output])


def test_weights_are_typed_inputs_while_probing_and_kept_in_the_result():
    """Probing copies the model per run: its large weights go in as typed inputs, never copied; integer tensors
    small enough to be shape arithmetic stay constants; the result is the whole model, weights included."""
    import numpy as np

    from graphopt.core.shape_probe import _weightless

    w = onnx.numpy_helper.from_array(np.ones((64, 32), np.float32), "w")
    target = onnx.numpy_helper.from_array(np.array([-1, 4, 8], np.int64), "target")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("Reshape", ["h", "target"], ["y"])],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w, target])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    light = _weightless(model)
    assert [i.name for i in light.graph.initializer] == ["target"]
    assert [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in light.graph.input][1:] == \
        [("w", [64, 32])]
    probed = probe_infer(model)
    assert _shapes(probed)["y"] == (["N", 4, 8], 1) and _shapes(probed)["h"] == (["N", 32], 1)
    assert [i.name for i in probed.graph.initializer] == ["w", "target"]
    assert probed.graph.initializer[0].raw_data == w.raw_data


def test_shape_arithmetic_is_evaluated_as_onnx_defines_it():
    """The evaluator against onnxruntime on the ops where numpy's defaults differ: integer Div truncates toward
    zero, Mod follows the divisor's sign (fmod=0) or the dividend's (fmod=1), Gather takes negative indices."""
    import numpy as np
    import onnxruntime as ort

    from graphopt.core.shape_arith import evaluate as _evaluate

    a = np.array([-7, 7, -8, 9], np.int64)
    b = np.array([2, -2, 3, 4], np.int64)
    cases = [("Div", {}), ("Mod", {"fmod": 0}), ("Mod", {"fmod": 1})]
    for op, attrs in cases:
        node = onnx.helper.make_node(op, ["a", "b"], ["y"], **attrs)
        graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, [4])
                                                     for n in "ab"],
                                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [4])])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
        expected, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"a": a, "b": b})
        assert np.array_equal(_evaluate(node, {"a": a, "b": b}, {}), expected), (op, attrs)
    gather = onnx.helper.make_node("Gather", ["s", "i"], ["g"], axis=0)
    assert _evaluate(gather, {"s": np.array([5, 6, 7]), "i": np.array(-1)}, {}) == 7
    m = np.array([[2, 3], [4, 5]], np.int64)
    prod = onnx.helper.make_node("ReduceProd", ["m"], ["p"], axes=[1], keepdims=0)
    assert _evaluate(prod, {"m": m}, {}).tolist() == [6, 20]
    smallest = onnx.helper.make_node("Min", ["x", "y"], ["z"])  # broadcast, as ONNX's variadic Min does
    assert _evaluate(smallest, {"x": np.array([3, 9]), "y": np.array(4)}, {}).tolist() == [3, 4]


def _node_case(name: str):
    from onnx.backend.test.case import node

    return next(c for c in node.collect_testcases(None) if c.name == name)


def _batch_symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with dim 0 of each input a symbol of its own (N0, N1, ...), its outputs as declared."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, vi in enumerate(vi for vi in out.graph.input if vi.type.tensor_type.shape.dim):
        vi.type.tensor_type.shape.dim[0].dim_param = f"N{k}"
    return out


@pytest.mark.parametrize("name", ["test_rotary_embedding_expanded", "test_rotary_embedding_no_position_ids_expanded",
                                  "test_rotary_embedding_interleaved_expanded"])
def test_symbolic_fallback_shapes_are_sound(name, monkeypatch):
    """RotaryEmbedding's expanded function with a symbolic batch: probing gives up (the outputs declare batch 2),
    and onnxruntime's symbolic inference splits the 8-wide head evenly (4 + 4, when the computed split is 8 + 0)
    and takes position_ids' batch for the input's. Every dim infer_shapes annotates must hold when the model runs,
    and fold_constants, which folds shape arithmetic from static dims, must give a valid model computing the same
    (before the fix: an invalid model, 'Inferred shape and existing shape differ in dimension 3: (8) vs (4)')."""
    import numpy as np
    import onnxruntime as ort

    from graphopt.core.pass_infra import get_pass

    monkeypatch.setenv("GRAPHOPT_SHAPE_CACHE", "0")
    case = _node_case(name)
    model = _batch_symbolic(case.model)
    assert probe_infer(model) is None  # the fallback is what is tested
    inferred = infer_shapes(model)
    # The real shapes: every tensor made an output, run on the case's inputs.
    traced = onnx.ModelProto()
    traced.CopyFrom(case.model)
    names = [o for n in traced.graph.node for o in n.output if o]
    traced.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = ort.InferenceSession(traced.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(zip([i.name for i in case.model.graph.input], case.data_sets[0][0]))
    real = dict(zip(names, (np.asarray(x).shape for x in session.run(names, feeds))))
    for vi in inferred.graph.value_info:
        dims = vi.type.tensor_type.shape.dim
        assert len(dims) == len(real[vi.name]), vi.name
        for d, size in zip(dims, real[vi.name]):
            assert not d.HasField("dim_value") or d.dim_value == size, (vi.name, dims, real[vi.name])

    graph = ir.to_graph(model)
    assert get_pass("fold_constants")()(graph).changed
    graph.cleanup().toposort()
    out = ir.to_model(graph)
    onnx.checker.check_model(out, full_check=True)
    for inputs, _ in case.data_sets:
        feeds = dict(zip([i.name for i in model.graph.input], inputs))
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# BERT's position ids: a [1, 64] buffer sliced to the sequence length S (``pos[:, :S]``) and a Reshape target
# computed from the slice's shape. Both probe sizes of S (97, 227) pass the clamp at 64. ``y``: BERT adds the slice
# to the embeddings.
POSITION_SLICE = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[N, S] x) => (float[1, ?] z%s) {
    pos = Constant<value = float[1, 64] {%s}>()
    s = Shape(x)
    one = Constant<value = int64 {1}>()
    seq = Gather<axis = 0>(s, one)
    zero1 = Constant<value = int64[1] {0}>()
    end = Unsqueeze(seq, zero1)
    one1 = Constant<value = int64[1] {1}>()
    p = Slice(pos, zero1, end, one1)
    ps = Shape(p)
    w = Gather<axis = 0>(ps, one)
    width = Unsqueeze(w, zero1)
    minus1 = Constant<value = int64[1] {-1}>()
    target = Concat<axis = 0>(minus1, width)
    z = Reshape(p, target)
    xf = Cast<to = 1>(x)
    %s
}
"""
_POSITIONS = ", ".join(f"{i}.0" for i in range(64))


def _position_slice(add: bool) -> onnx.ModelProto:
    return model_from_text(POSITION_SLICE % ((", float[N, S] y", _POSITIONS, "y = Add(xf, p)") if add else
                                             ("", _POSITIONS, "")))


@pytest.mark.parametrize("fallback", [False, True], ids=["probing", "symbolic fallback"])
def test_a_clamped_slice_is_not_sized_by_the_probe_sizes(fallback, monkeypatch):
    """``pos[:, :S]`` is S wide for S <= 64 and 64 wide past it: the probe sizes, both past it, must not make it
    a static 64 (before: [1, 64], fold_constants baked 64 into the Reshape, and every S but 64 failed), neither in
    probing (its small checking run) nor in the symbolic fallback's cross-check (which keeps the symbol)."""
    import numpy as np
    import onnxruntime as ort

    from graphopt.core.pass_infra import get_pass

    monkeypatch.setenv("GRAPHOPT_SHAPE_CACHE", "0")
    model = _position_slice(True)
    if fallback:  # as for BERT, where probing gives up elsewhere
        monkeypatch.setattr(shape_probe, "probe_infer", lambda model: None)
    shapes = _shapes(infer_shapes(model))
    width = shapes["p"][0][1]
    assert shapes["p"][0][0] == 1 and width != 64 and (width == "S" if fallback else width.startswith("unk__")), shapes
    assert shapes["z"][0][1] != 64 and shapes["xf"][0] == ["N", "S"], shapes
    graph = ir.to_graph(model)
    get_pass("fold_constants")()(graph)
    graph.cleanup().toposort()
    out = ir.to_model(graph)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in (3, 8, 64):
        x = np.arange(2 * size, dtype=np.int64).reshape(2, size)
        for w, g in zip(want.run(None, {"x": x}), got.run(None, {"x": x})):
            np.testing.assert_array_equal(g, w)


# ``max(S, 64)``: S at both large probe sizes, 64 at the small ones.
MAX_FLOOR = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, S] x) => (float[?, ?] y) {
    s = Shape(x)
    sixty_four = Constant<value = int64[2] {1, 64}>()
    target = Max(s, sixty_four)
    y = ConstantOfShape(target)
}"""


def test_probing_checks_its_static_dims_at_small_sizes():
    """The third run: a dim both large runs see as 64 but a small one as S is no static 64; ``max(S, 64)`` (S at
    both large sizes) is no ``S``."""
    shapes = _shapes(probe_infer(_position_slice(False)))
    assert shapes["p"][0][1] not in (64, "S") and shapes["xf"][0] == ["N", "S"], shapes
    floor = model_from_text(MAX_FLOOR)
    shapes = _shapes(probe_infer(floor))
    assert shapes["target"][0] == [2] and shapes["y"][0][0] == "N" and shapes["y"][0][1] not in ("S", 64), shapes


@pytest.fixture
def runs(monkeypatch) -> list[bool]:
    """Each concrete run probing makes, as whether it is partial (the checking run is)."""
    made: list[bool] = []
    concrete = shape_probe._concrete

    def counted(*args, **kwargs):
        made.append(kwargs.get("partial", False))
        return concrete(*args, **kwargs)

    monkeypatch.setattr(shape_probe, "_concrete", counted)
    return made


def test_the_checking_run_runs_only_where_a_size_can_be_clamped(runs):
    """Without a clamping op on shape arithmetic or a Slice that could clamp, the two large runs decide and the
    small checking run is spared; ``x[:, :64]`` of a symbolic S (constant bounds) still gets it, and is no static
    64 (at both large sizes it is 64 wide)."""
    plain = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8] x) => (float[?, ?, ?] y) {
        s = Shape(x)
        zero = Constant<value = int64[1] {0}>()
        one = Constant<value = int64[1] {1}>()
        n = Slice(s, zero, one)
        tail = Constant<value = int64[2] {2, 4}>()
        target = Concat<axis = 0>(n, tail)
        y = Reshape(x, target)
    }""")
    assert _shapes(probe_infer(plain))["y"][0] == ["N", 2, 4] and runs == [False, False]
    runs.clear()
    crop = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, S] x) => (float[?, ?] y) {
        zero = Constant<value = int64[1] {0}>()
        end = Constant<value = int64[1] {64}>()
        one = Constant<value = int64[1] {1}>()
        y = Slice(x, zero, end, one)
    }""")
    assert _shapes(probe_infer(crop))["y"][0][1] not in (64, "S") and runs == [False, False, True]


# torch's ``cls_token.expand(B, -1, -1)``: the target's -1s become ones through a Where on shape values. (``x`` is
# wide enough not to pass for shape arithmetic: the Relu on it is no clamp.)
EXPAND = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2048] x, float[1, 1, 4] cls) => (float[?, ?, ?] y) {
    h = Relu(x)
    s = Shape(h)
    zero = Constant<value = int64 {0}>()
    n = Gather<axis = 0>(s, zero)
    zero1 = Constant<value = int64[1] {0}>()
    n1 = Unsqueeze(n, zero1)
    minus = Constant<value = int64[2] {-1, -1}>()
    shape = Concat<axis = 0>(n1, minus)
    ss = Shape(shape)
    ones = ConstantOfShape<value = int64[1] {1}>(ss)
    neg = Constant<value = int64 {-1}>()
    negs = Mul(ones, neg)
    is_neg = Equal(shape, negs)
    target = Where(is_neg, ones, shape)
    y = Expand(cls, target)
}"""


def test_a_clamp_on_shape_values_is_checked_by_its_values_alone(runs):
    """A Where or Max on shape arithmetic is evaluated at the small sizes by itself, each tensor's shape there read
    as the two runs say it is: torch's ``expand`` (of the batch of an intermediate tensor, as in LV-ViT) computes
    what the runs say (the batch, ones), so the checking run is spared; ``Max(Shape(x), [1, 64])`` does not (64,
    not S), and gets it."""
    shapes = _shapes(probe_infer(model_from_text(EXPAND)))
    assert shapes["y"][0] == ["N", 1, 4] and shapes["target"][0] == [3] and runs == [False, False], (shapes, runs)
    runs.clear()
    floor = model_from_text(MAX_FLOOR)
    shapes = _shapes(probe_infer(floor))
    assert shapes["y"][0][0] == "N" and shapes["y"][0][1] not in ("S", 64) and runs == [False, False, True]


def test_a_clamp_after_a_slice_still_gets_the_check(runs):
    """A Slice that cannot clamp, before a ``max(S, 64)``: the Max is still a clamp to check (the clamp search
    once mistook its inputs ``s`` and ``rc`` for data: names inside the Slice's data input ``srcr``)."""
    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, S, 8] src) => (float[?, ?, ?] y, float[?, ?, ?] piece) {
        zero = Constant<value = int64[1] {0}>()
        four = Constant<value = int64[1] {4}>()
        two = Constant<value = int64[1] {2}>()
        srcr = Relu(src)
        piece = Slice(srcr, zero, four, two)
        s = Shape(src)
        rc = Constant<value = int64[3] {1, 64, 1}>()
        target = Max(s, rc)
        y = ConstantOfShape(target)
    }""")
    shapes = _shapes(probe_infer(model))
    assert shapes["piece"][0] == ["N", "S", 4] and runs == [False, False, True], (shapes, runs)
    assert shapes["y"][0][0] == "N" and shapes["y"][0][1] not in ("S", 64) and shapes["y"][0][2] == 8, shapes


def test_graph_inputs_keep_their_declared_shapes():
    """onnxruntime's symbolic inference merges the symbol N with the 5 it meets (``x * slope``, slope [N]
    broadcast against x's last dim) and rewrites the inputs to [5, 4, 5] and [5]; onnxruntime then rejects every
    other batch ("Got invalid dimensions for input"). Inputs keep their declared types, graph outputs their
    declared dims, and nothing derived from the merge (y as [5, 4, 5]) is kept: through ``shapes.infer_shapes`` and
    the infer_shapes pass."""
    import numpy as np
    import onnxruntime as ort

    from graphopt.core.pass_infra import get_pass

    model = model_from_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 5] x, float[N] slope) => (float[N, 4, 5] y, float[?, ?, ?] w) {
        m = Mul(x, slope)
        y = Relu(m)
        w = Neg(m)
    }""")
    assert probe_infer(model) is None  # at N = 97 the broadcast fails: the symbolic fallback is what is tested
    inferred = infer_shapes(model)
    assert [i.SerializeToString() for i in inferred.graph.input] == [
        i.SerializeToString() for i in model.graph.input]
    shapes = _shapes(inferred)
    assert shapes["y"][0] == ["N", 4, 5] and shapes["m"][0][0] != 5 and shapes["w"][0][0] != 5, shapes
    graph = ir.to_graph(model)
    get_pass("infer_shapes")()(graph)
    out = ir.to_model(graph)
    assert [i.SerializeToString() for i in out.graph.input] == [i.SerializeToString() for i in model.graph.input]
    session = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((3, 4, 5), np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x, "slope": np.full(5, 2, np.float32)})[0], 2 * x)
