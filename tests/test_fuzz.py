"""Property tests (hypothesis): random recipes and random small graphs.

- Any YAML-shaped value given as a recipe either parses or raises a one-line ``UserError``; never another
  exception.
- Any valid random graph (chains of elementwise ops, GELUs in their erf and tanh spellings and near-GELUs with a
  constant off, Softmax over any axis of rank 2-5 tensors, Transposes, Reshapes, residual Adds, per-channel
  Mul/Add before a Conv, ScatterND shift chains, extra graph outputs; opsets 11-20; fixed or symbolic batch) run
  through random pass lists comes out verified (checked here again: ``onnx.checker`` and onnxruntime against the
  input model), or is refused with one of the ``UserError``s a pass documents for its arguments
  (``DOCUMENTED_REFUSALS``). Pass arguments are mostly derived from the graph (insert_fusion_breaker's ``path``
  from an actual single-consumer chain, softmax_transpose's rank/axis/shape from an actual Softmax, gelu_precision
  fusing), sometimes random (a bad one must be a clean refusal). A pass that breaks numerics on a valid graph
  (``VerificationFailed``, or a failed verification that ``on_fail: skip`` would hide) or crashes (``PassError``)
  is a bug in that pass: the test fails, and the graph and pass list are saved to
  ``runs/fuzz-failures/<hash>.onnx`` (and ``.json``) for the bug report.
- Every built-in pass that can rewrite a graph (``REWRITING``: all of graphopt.passes but ``NEVER_REWRITES`` and
  the knowledge library's rewrites, which the random pass lists draw too but which are held to their own
  differential corpora: tests/test_node_corpus.py and tests/test_corpus.py) rewrites at least one of the random
  graphs made for it (``graphs(focus=pass)``, the pass somewhere in the list):
  a fuzzer whose arguments or graphs stopped matching a pass would otherwise let that pass's bugs through unnoticed.
  And gelu_precision / fold_affine_into_conv run first find exactly the GELUs / foldable Convs the generator made
  (``FINDS``): a matcher missing a spelling, or taking a near-GELU, fails even where the numerics cannot tell.

Examples are derandomized (the same on every run, so CI is deterministic) and few enough to run in well under a
minute; raise ``GRAPHOPT_FUZZ_EXAMPLES`` to search longer (random examples, that many times as many). A failing
example is reported as found: shrinking it runs the pipeline hundreds of times (minutes per failure); set
``GRAPHOPT_FUZZ_SHRINK=1`` for the smallest failing graph for a bug report.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from graphopt.core.errors import PassError, UserError, VerificationFailed  # noqa: E402
from graphopt.core.pass_infra import all_passes, pass_params  # noqa: E402
from graphopt.core.pipeline import run_pipeline  # noqa: E402
from graphopt.commands.recipe import parse_recipe  # noqa: E402
from graphopt.core.tolerance import Tolerance
from graphopt.core.verify import compare_outputs  # noqa: E402
from graphopt.core.feeds import make_inputs
from graphopt.core.runner import Runner

SCALE = int(os.environ.get("GRAPHOPT_FUZZ_EXAMPLES", "1"))
SHRINK = os.environ.get("GRAPHOPT_FUZZ_SHRINK", "") not in ("", "0")
FUZZ = settings(deadline=None, derandomize=SCALE == 1, database=None, print_blob=True,
                phases=[p for p in Phase if p is not Phase.shrink or SHRINK], report_multiple_bugs=SHRINK,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
# Rewrites may reorder fp32 arithmetic (folded constants, a Softmax on a transposed axis): relative error bounds.
TOLERANCE = Tolerance(max_abs=None, max_rel=1e-4, cosine=0.99999, top1_agreement=None)
# In fp16 a reordered sum (fold_affine_into_conv's W * s for Conv(x * s)) moves an output by an ulp of the terms
# summed, which relative to a small output (down to verify's floor, 1e-3 of the largest) is anything up to ~1:
# fp16 graphs are judged by cosine alone (a wrong axis, perm or op shows there); fp32 ones bound the error.
FP16_TOLERANCE = Tolerance(max_abs=None, max_rel=None, cosine=0.9999, top1_agreement=None)
# The built-in passes (those of graphopt.passes), sorted by name: not the deliberately broken ones other test modules
# register (tests/test_*.py), nor the README example's (examples/), nor plugins. Which of those got imported before
# this module depends on collection order, and it would change which passes (and so which examples) hypothesis
# draws: the fuzz is about graphopt's own passes, the same on every run.
PASSES = {name: cls for name, cls in sorted(all_passes().items()) if cls.__module__.startswith("graphopt.passes.")}
# Built-in passes that never change the graph (changed is always false): all others must rewrite a random graph.
NEVER_REWRITES = {"mixlist": "only asks ATC for precision lists"}
# The library's own rewrites, held to the node and timm corpora; fold_constants, older than the library, keeps its case.
LIBRARY_ONLY = {name for name, cls in PASSES.items() if cls.library} - {"fold_constants"}
REWRITING = sorted(set(PASSES) - set(NEVER_REWRITES) - LIBRARY_ONLY)
OP_NAMES = ["Softmax", "Mul", "Add", "Gelu", "LayerNorm", "Relu", "MatMul", "Transpose", "Pow", "Erf", "Tanh", "Conv",
            "Reshape", "Gemm", "GlobalAveragePool", "Flatten", "Div", "Sigmoid", "ReduceMean", "Identity"]

# ---------------------------------------------------------------------------------------------------------------
# Recipes

scalars = st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True, allow_infinity=True) \
    | st.text(max_size=6) | st.sampled_from(OP_NAMES)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=6) | st.integers(0, 3), inner, max_size=3), max_leaves=8)


def for_type(tp, strict: bool = False) -> st.SearchStrategy:
    """Values of the annotation ``tp`` (mostly), or anything at all (sometimes, unless ``strict``): wrong types
    must be caught."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        good = st.sampled_from(args)
    elif origin in (typing.Union, types.UnionType):
        good = st.one_of([for_type(a, strict) for a in args])
    elif tp is type(None):
        good = st.none()
    elif tp is bool:
        good = st.booleans()
    elif tp is int:
        good = st.integers(-6, 6)
    elif tp is float:
        good = st.floats(-2, 2, allow_nan=False)
    elif tp is str:
        good = st.sampled_from(OP_NAMES)
    elif origin is list:
        good = st.lists(for_type(args[0], strict) if args else anything, max_size=5)
    elif origin is dict:
        good = st.dictionaries(st.sampled_from(["x", "y", "input"]),
                               for_type(args[1], strict) if len(args) > 1 else anything, max_size=2)
    else:
        good = anything
    return good if strict else st.one_of(good, good, good, anything)


@st.composite
def pass_entries(draw, typed: bool = False, name: str | None = None):
    """A recipe's pass entry; ``typed``: a registered pass (``name`` if given), known arguments of the right types
    (their values may still be out of range)."""
    names = sorted(PASSES)
    if name is None:
        name = draw(st.sampled_from(names) if typed else st.sampled_from(names) | st.text(max_size=8))
    if name not in PASSES:
        return draw(st.sampled_from([name, {"pass": name}]))
    hints = typing.get_type_hints(PASSES[name])
    params = [p.name for p in pass_params(PASSES[name])]
    extra = ["on_fail"] if typed else ["on_fail", "bogus"]
    chosen = draw(st.lists(st.sampled_from(params + extra), unique=True, max_size=3))
    entry: dict = {"pass": name}
    for key in chosen:
        if key == "on_fail":
            entry[key] = draw(st.sampled_from(["stop", "skip"] if typed else ["stop", "skip", "maybe"]))
        elif key == "bogus":
            entry[key] = draw(anything)
        else:
            entry[key] = draw(for_type(hints.get(key, typing.Any), strict=typed))
    if name == "mixlist" and "mode" in entry:
        entry["mode"] = "static"  # the measured mode calibrates for seconds: out of a quick fuzz's budget
    return entry


@st.composite
def recipes(draw):
    top = {
        "model": draw(st.sampled_from([{"onnx": "model.onnx"}, {"onnx": "absent.onnx"}, {"exporter": "nope"}])
                      | st.fixed_dictionaries({"onnx": anything}) | anything),
        "input": draw(st.just({"name": "x", "shape": [1, 2, 3, 4]})
                      | st.fixed_dictionaries({"name": for_type(str), "shape": for_type(list[int])}) | anything),
        "passes": draw(st.lists(pass_entries(), max_size=4) | anything),
        "verify": draw(st.fixed_dictionaries({}, optional={
            "samples": for_type(int), "enabled": for_type(bool), "seed": for_type(int), "on_fail": anything,
            "tolerance": st.fixed_dictionaries({}, optional={"max_abs": for_type(float | None),
                                                             "cosine": for_type(float | None)}) | anything})),
        "emit": draw(for_type(list[typing.Literal["model", "report", "atc"]])),
        "atc": draw(st.fixed_dictionaries({}, optional={"batch_sizes": for_type(list[int]), "log": anything,
                                                        "precision_mode": anything})),
        "preprocess": draw(st.fixed_dictionaries({}, optional={"resize": for_type(int | list[int]),
                                                               "mean": for_type(float | list[float]),
                                                               "std": for_type(float | list[float]),
                                                               "interpolation": anything})),
    }
    keep = draw(st.lists(st.sampled_from(sorted(top) + ["extra"]), unique=True, min_size=1))
    data = {k: top.get(k, "surprise") for k in keep}
    return draw(st.sampled_from([data, data, data, list(data.values()), None, "words", 3]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    onnx.save(oh.make_model(oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g",
                                          [oh.make_tensor_value_info("x", 1, ["N", 2, 3, 4])],
                                          [oh.make_tensor_value_info("y", 1, ["N", 2, 3, 4])]),
                            opset_imports=[oh.make_opsetid("", 17)]), path / "model.onnx")
    return path


@settings(FUZZ, max_examples=300 * SCALE)
@given(data=recipes())
def test_any_recipe_parses_or_is_a_user_error(folder, data):
    try:
        recipe = parse_recipe(data, folder / "fuzz.yaml")
    except UserError as e:
        assert "\n" not in str(e) and str(e).startswith(str(folder / "fuzz.yaml"))
        return
    recipe.build_passes()  # a parsed recipe's passes always build


# ---------------------------------------------------------------------------------------------------------------
# Random graphs

UNARY = ("Relu", "Sigmoid", "Tanh", "Abs", "Neg")
# Opset 20 (the first with Gelu, which gelu_precision fuses into) more often than the others.
OPSETS = list(range(11, 21)) + [20] * 5


# What a graph must hold for a pass to have something to rewrite (graphs(focus=pass)): the kinds of step below.
FOCUS_KINDS = {"softmax_transpose": ["softmax"], "gelu_precision": ["gelu_erf", "gelu_tanh"],
               "fold_affine_into_conv": ["affine_conv"], "replace_shift_scatter": ["shift"],
               "drop_initializer_inputs": ["scalar", "vector"]}  # steps with constants, one an input too


@st.composite
def graphs(draw, focus: str | None = None) -> tuple[onnx.ModelProto, list[int], str, collections.Counter]:
    """A valid random model, the input shape and dtype to feed it, and what a pass run first must find in it
    (``expect``: exact GELUs of each form, not the near-GELUs; Convs with a foldable affine chain before them).
    Dims are ints, "N" (the symbolic batch) or None (unknown after a Reshape merged N into another dim).
    ``focus``: a pass name; the graph then holds what that pass rewrites (FOCUS_KINDS: one such step, where it
    fits, and an opset and input shape it can be rewritten at)."""
    expect: collections.Counter = collections.Counter()
    forced = FOCUS_KINDS.get(focus)
    opsets = {"gelu_precision": [20], "softmax_transpose": [o for o in OPSETS if o >= 13]}.get(focus, OPSETS)
    opset = draw(st.sampled_from(opsets))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float16]))
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rank = draw(st.integers(3 if forced else 2, 5))
    shape = [draw(st.integers(2 if forced and k in (1, rank - 1) else 1, 4)) for k in range(rank)]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs: list[str] = []
    counted: set[str] = set()  # initializers of the steps expect counts
    names = iter(range(10 ** 6))

    def new(prefix: str = "t") -> str:
        return f"{prefix}{next(names)}"

    def const(value, of=None) -> str:
        name = new("c")
        tensor = onnx.numpy_helper.from_array(np.asarray(value, dtype=of or dtype), name)
        if draw(st.integers(0, 3)) == 0:  # a Constant node rather than an initializer
            nodes.append(oh.make_node("Constant", [], [name], value=tensor))
        else:
            inits.append(tensor)
        return name

    def node(op, inputs, outputs, **attrs) -> onnx.NodeProto:
        # node names: unique or empty (ONNX asks node names to be unique; onnxruntime refuses repeats)
        name = draw(st.sampled_from([new("n"), new("n"), ""]))
        return oh.make_node(op, inputs, outputs, name=name, **attrs)

    def either(op, a, b, out) -> onnx.NodeProto:
        """A commutative ``op`` with its operands in either order."""
        return node(op, [a, b] if draw(st.booleans()) else [b, a], [out])

    def gelu_const(value: float, ok: list[bool]) -> str:
        """A GELU constant; now and then (once per GELU at most) off by 2%: a near-GELU that must not be fused."""
        if ok[0] and draw(st.integers(0, 12)) == 0:
            ok[0] = False
            value *= draw(st.sampled_from([0.98, 1.02]))
        return const(value)

    def gelu_tail(x: str, t: str, out: str, ok: list[bool]) -> list[onnx.NodeProto]:
        """``out = 0.5 * x * t`` in one of the spellings exporters write."""
        a = new()
        form = draw(st.sampled_from(["(x*t)*0.5", "(x*t)/2", "x*(t*0.5)", "(x*0.5)*t", "(x/2)*t"]))
        if form == "(x*t)*0.5":
            return [either("Mul", x, t, a), either("Mul", a, gelu_const(0.5, ok), out)]
        if form == "(x*t)/2":
            return [either("Mul", x, t, a), node("Div", [a, gelu_const(2.0, ok)], [out])]
        if form == "x*(t*0.5)":
            return [either("Mul", t, gelu_const(0.5, ok), a), either("Mul", x, a, out)]
        if form == "(x*0.5)*t":
            return [either("Mul", x, gelu_const(0.5, ok), a), either("Mul", a, t, out)]
        return [node("Div", [x, gelu_const(2.0, ok)], [a]), either("Mul", a, t, out)]

    cur = "x"
    symbolic = draw(st.booleans()) and focus != "replace_shift_scatter"  # a shift is rewritten at a fixed batch
    cur_shape: list = (["N"] if symbolic else [shape[0]]) + shape[1:]
    dims_in = list(cur_shape)
    history = [(cur, list(cur_shape))]
    steps = draw(st.integers(1, 8))
    pending_from = draw(st.integers(0, steps - 1)) if forced else steps  # the focus step: here, or where it fits
    for step in range(steps):
        kind = draw(st.sampled_from(["unary", "scalar", "vector", "gelu_erf", "gelu_tanh", "gelu_erf", "gelu_tanh",
                                     "softmax", "softmax",
                                     "transpose", "reshape", "residual", "identity", "affine_conv", "affine_conv",
                                     "shift", "shift"]))
        if step >= pending_from:
            kind = draw(st.sampled_from(forced))
            if kind == "softmax" and len(cur_shape) < 3:
                kind = "unary"
        out = new()
        channels = cur_shape[1] if len(cur_shape) >= 3 else None
        concrete = [shape[0] if d == "N" else d for d in cur_shape]
        if kind == "vector" and not isinstance(cur_shape[-1], int):
            kind = "unary"
        if kind == "affine_conv" and not (isinstance(channels, int) and channels >= 2):
            kind = "unary"
        if kind == "shift" and (len(cur_shape) < 3 or None in concrete or concrete[-1] < 2):
            kind = "unary"
        if forced and kind in forced:
            pending_from = steps  # done
        made_before = len(inits)
        if kind == "identity":
            nodes.append(node("Identity", [cur], [out]))
        elif kind == "unary":
            nodes.append(node(draw(st.sampled_from(UNARY)), [cur], [out]))
        elif kind == "scalar":
            op = draw(st.sampled_from(["Add", "Mul", "Sub", "Div", "Pow"]))
            value = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 1.4142135, 3.0]))
            if op == "Div" and value == 0.0:
                value = 1.0
            if op == "Pow":  # an integral power: defined for negative x too
                value = draw(st.sampled_from([1.0, 2.0, 3.0]))
            operands = [cur, const(value)] if op in ("Div", "Sub", "Pow") or draw(st.booleans()) \
                else [const(value), cur]
            nodes.append(node(op, operands, [out]))
        elif kind == "vector":
            vec = draw(st.lists(st.floats(-2, 2, width=32), min_size=cur_shape[-1], max_size=cur_shape[-1]))
            nodes.append(node(draw(st.sampled_from(["Add", "Mul"])), [cur, const(vec)], [out]))
        elif kind == "gelu_erf":  # x * 0.5 * (1 + erf(x / sqrt 2)), spelled as an exporter might
            a, b, c = new(), new(), new()
            ok = [True]
            if draw(st.booleans()):
                nodes.append(node("Div", [cur, gelu_const(2 ** 0.5, ok)], [a]))
            else:
                nodes.append(either("Mul", cur, gelu_const(2 ** -0.5, ok), a))
            nodes += [node("Erf", [a], [b]), either("Add", b, gelu_const(1.0, ok), c), *gelu_tail(cur, c, out, ok)]
            expect["gelu erf"] += ok[0]
        elif kind == "gelu_tanh":  # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
            cube, d, e, f, g, h = (new() for _ in range(6))
            ok = [True]
            spelling = draw(st.sampled_from(["pow", "x*(x*x)", "(x*x)*x"]))
            if spelling == "pow":
                nodes.append(node("Pow", [cur, const(3.0)], [cube]))
            else:
                sq = new()
                nodes += [node("Mul", [cur, cur], [sq]),
                          node("Mul", [cur, sq] if spelling == "x*(x*x)" else [sq, cur], [cube])]
            nodes += [either("Mul", cube, gelu_const(0.044715, ok), d), either("Add", cur, d, e),
                      either("Mul", e, gelu_const((2 / np.pi) ** 0.5, ok), f), node("Tanh", [f], [g]),
                      either("Add", g, gelu_const(1.0, ok), h), *gelu_tail(cur, h, out, ok)]
            expect["gelu tanh"] += ok[0]
        elif kind == "softmax":
            axis = draw(st.none() | st.integers(-len(cur_shape), len(cur_shape) - 1))  # None: the default
            if focus == "softmax_transpose" and axis is not None and axis % len(cur_shape) == 1:
                axis = None  # not axis 1, which softmax_transpose leaves alone
            nodes.append(node("Softmax", [cur], [out], **({} if axis is None else {"axis": axis})))
        elif kind == "transpose":
            perm = draw(st.none() | st.permutations(range(len(cur_shape))))  # None: the default, reversed
            nodes.append(node("Transpose", [cur], [out], **({} if perm is None else {"perm": list(perm)})))
            cur_shape = [cur_shape[p] for p in (perm or reversed(range(len(cur_shape))))]
        elif kind == "reshape":
            if len(cur_shape) < 3 or draw(st.booleans()):  # a trailing 1
                target, cur_shape = [0] * len(cur_shape) + [1], cur_shape + [1]
            else:  # merge the last two dims; 0 copies a dim, whatever it is
                a, b = cur_shape[-2:]
                target = [0] * (len(cur_shape) - 2) + [-1]
                cur_shape = cur_shape[:-2] + [a * b if isinstance(a, int) and isinstance(b, int) else None]
            nodes.append(node("Reshape", [cur, const(target, np.int64)], [out]))
        elif kind == "affine_conv":  # Mul/Add by per-channel constants, then a Conv (fold_affine_into_conv)
            r = len(cur_shape)
            chain = draw(st.lists(st.sampled_from(["Mul", "Add"]), min_size=1, max_size=2))
            shifted = False  # an Add of a non-zero vector (an Add of zeros is no shift: it folds anywhere)
            for op in chain:
                vec = np.asarray(draw(st.lists(st.floats(-2, 2, width=16), min_size=channels, max_size=channels)))
                shifted |= op == "Add" and bool(np.any(vec != 0))
                lead = draw(st.sampled_from([0, 1])) if r > 2 else 0  # [C, 1, ..] or [1, C, 1, ..]
                step = new()
                nodes.append(either(op, cur, const(vec.reshape((1,) * lead + (channels,) + (1,) * (r - 2))), step))
                cur = step
            groups = draw(st.sampled_from([1, channels]))
            cout = groups * draw(st.integers(1, 2)) if groups > 1 else draw(st.integers(1, 4))
            kernel = draw(st.sampled_from([1, 1, 3]))  # 3: padded to keep the size (a shift must not fold)
            weight = draw(st.lists(st.floats(-1, 1, width=16), min_size=cout * (channels // groups) * kernel ** (r - 2),
                                   max_size=cout * (channels // groups) * kernel ** (r - 2)))
            inputs = [cur, const(np.reshape(weight, [cout, channels // groups] + [kernel] * (r - 2)))]
            if draw(st.booleans()):
                inputs.append(const(np.linspace(-1, 1, cout)))
            attrs = {"group": groups} if groups > 1 or draw(st.booleans()) else {}
            if kernel == 3:
                attrs["pads"] = [1] * (2 * (r - 2))
            # A shift does not fold into a padded Conv, but a scale next to the Conv folds even after a shift
            expect["convs"] += kernel == 1 or not shifted or chain[-1] == "Mul"
            nodes.append(node("Conv", inputs, [out], **attrs))
            cur_shape = [cur_shape[0], cout, *cur_shape[2:]]
        elif kind == "shift":  # ScatterND into zeros of slices of x shifted along the last axis, per channel group
            buf, dims = new(), new()
            nodes += [node("Shape", [cur], [dims]),
                      node("ConstantOfShape", [dims], [buf], value=onnx.numpy_helper.from_array(np.zeros(1, dtype)))]
            c, width = concrete[1], concrete[-1]
            split = draw(st.integers(0, c - 1))
            groups = [(0, split), (split, c)] if split else [(0, c)]
            for k, (c0, c1) in enumerate(groups):
                d = draw(st.integers(-(width - 1), width - 1))  # y[..., w] = x[..., w + d] inside the window
                lo, hi = max(0, -d), width - max(0, d)
                box = [concrete[0], c1 - c0, *concrete[2:-1], hi - lo]
                index = np.stack(np.meshgrid(*[np.arange(n) for n in box], indexing="ij"), axis=-1)
                index[..., 1] += c0
                index[..., -1] += lo
                update, written = new(), out if k == len(groups) - 1 else new()
                nodes += [node("Slice", [cur, const([c0, lo + d], np.int64), const([c1, hi + d], np.int64),
                                         const([1, len(cur_shape) - 1], np.int64)], [update]),
                          node("ScatterND", [buf, const(index, np.int64), update], [written])]
                buf = written
        else:  # residual: add an earlier tensor of the same shape (two consumers for it)
            same = [name for name, s in history if s == cur_shape and None not in s and name != cur]
            if not same:
                nodes.append(node("Relu", [cur], [out]))
            else:
                nodes.append(node("Add", [cur, draw(st.sampled_from(same))], [out]))
        if kind in ("gelu_erf", "gelu_tanh", "affine_conv"):  # what expect counts reads these as constants
            counted.update(t.name for t in inits[made_before:])
        cur = out
        history.append((cur, list(cur_shape)))
        if draw(st.integers(0, 9)) == 0:
            outputs.append(cur)  # an intermediate graph output, also read inside the graph
    outputs.append(cur)
    if draw(st.integers(0, 9)) == 0:
        outputs.insert(0, "x")  # the input itself is an output too
    shapes = dict(history)
    # Now and then an initializer is a graph input too (a default a caller may override: never folded); the focus
    # of drop_initializer_inputs, which makes them constants, has one at least when there is an initializer.
    free = [t for t in inits if t.name not in counted]
    defaults = [t for t in free if draw(st.integers(0, 5)) == 0]
    if focus == "drop_initializer_inputs" and free and not defaults:
        defaults = [draw(st.sampled_from(free))]
    graph = oh.make_graph(nodes, "fuzz", [oh.make_tensor_value_info("x", elem, dims_in)]
                          + [oh.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in defaults],
                          [oh.make_tensor_value_info(o, elem, shapes[o]) for o in dict.fromkeys(outputs)], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, shape, np.dtype(dtype).name, expect


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in model.graph.node:
        for name in n.input:
            readers[name].append(n)
    return readers


def _softmax_inputs(model: onnx.ModelProto) -> list[tuple[list[int | None], int]]:
    """(input shape, axis as written or its default) of each Softmax; unknown and symbolic dims as None."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
              for vi in (*inferred.input, *inferred.value_info, *inferred.output)}
    default = -1 if model.opset_import[0].version >= 13 else 1
    return [(shapes[n.input[0]], next((a.i for a in n.attribute if a.name == "axis"), default))
            for n in model.graph.node if n.op_type == "Softmax" and n.input[0] in shapes]


# The ops a pass rewrites (for choosing passes that have something to do in a graph).
TARGETS = {"softmax_transpose": {"Softmax"}, "gelu_precision": {"Erf", "Tanh"}, "fold_affine_into_conv": {"Conv"},
           "replace_shift_scatter": {"ScatterND"}}


@st.composite
def graph_pass_entries(draw, model: onnx.ModelProto, name: str | None = None) -> dict:
    """A pass entry (of pass ``name`` if given) whose arguments fit ``model`` (mostly: random ones now and then,
    which must be refused cleanly or match nothing, unless ``name`` is given): what a recipe for this graph would
    say."""
    if name is None:  # any pass; more often one with something to rewrite in this graph
        present = {n.op_type for n in model.graph.node}
        likely = [p for p, ops in sorted(TARGETS.items()) if p in PASSES and present & ops]
        name = draw(st.sampled_from(sorted(PASSES) + 4 * likely + ["insert_fusion_breaker"] * 2))
        if draw(st.integers(0, 5)) == 0:
            return draw(pass_entries(typed=True, name=name))
    entry: dict = {"pass": name}
    if draw(st.integers(0, 4)) == 0:
        entry["on_fail"] = draw(st.sampled_from(["stop", "skip"]))
    if name == "insert_fusion_breaker":
        # a path down single-consumer edges from a node of the graph, as match_path_down follows them
        readers = _consumers(model)
        starts = [n for n in model.graph.node if n.op_type != "Constant"]
        path = [draw(st.sampled_from(starts))]
        while len(readers[path[-1].output[0]]) == 1 and len(path) < 5:
            path.append(readers[path[-1].output[0]][0])
        path = path[:draw(st.integers(1, len(path)))]
        entry["path"] = [n.op_type for n in path]
        entry["input_index"] = draw(st.sampled_from([0, 0, 1, len(path[0].input)]))
        entry["op"] = draw(st.sampled_from(["Pow", "Pow", "Mul", "Add", "Identity"]))
        entry["occurrence"] = draw(st.sampled_from(["all", "first", "last"]))
    elif name == "softmax_transpose":
        softmaxes = [(s, a) for s, a in _softmax_inputs(model) if len(s) >= 3 and a % len(s) != 1]
        if softmaxes:
            dims, axis = draw(st.sampled_from(softmaxes))
            rank = len(dims)
            entry["rank"] = rank
            entry["axis"] = draw(st.sampled_from([axis % rank, axis % rank - rank]))
            if draw(st.booleans()):  # only this shape; None matches any dim
                entry["shape"] = [d if d is not None and draw(st.booleans()) else None for d in dims]
        if draw(st.booleans()):
            entry["fuse_transposes"] = draw(st.booleans())
    elif name == "gelu_precision":
        entry["fuse"] = draw(st.sampled_from([True, True, False]))
        if draw(st.booleans()):
            entry["mode"] = draw(st.sampled_from(["high_performance", "high_precision"]))
    elif name == "replace_shift_scatter":
        if draw(st.booleans()):
            entry["probe_batches"] = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
    elif name == "drop_initializer_inputs":
        held = [i.name for i in model.graph.input if i.name in {t.name for t in model.graph.initializer}]
        if held and draw(st.booleans()):
            entry["names"] = draw(st.lists(st.sampled_from(held), min_size=1, max_size=len(held), unique=True))
    elif name in ("simplify", "fold_constants", "mixlist") and draw(st.booleans()):
        return draw(pass_entries(typed=True, name=name))
    return entry


# What a pass may refuse a valid model with, as a one-line UserError: arguments that do not fit the model, and
# recipe-order mistakes the pipeline names. Anything else a valid graph gets is a bug.
DOCUMENTED_REFUSALS = (
    r"^simplify: fixed_input_shape",  # names an input the model lacks, or dims that do not fit it
    r"asks for precision_mode .*, an earlier pass asked for",  # two passes asking for different modes
    r"^keep_dtype names node .* which is not in the final graph",  # a later pass renamed the node
)
FAILURES = Path(__file__).resolve().parent.parent / "runs" / "fuzz-failures"


def save_failure(model: onnx.ModelProto, entries: list, shape: list[int], dtype: str, error: Exception) -> Path:
    """The input graph as ``runs/fuzz-failures/<hash>.onnx`` and, beside it, the pass list, input and error as
    ``<hash>.json``; the hash is of both, so each failing case is kept once. Written for the example hypothesis
    reports (its final, shrunk one), not for each it tries while shrinking."""
    from hypothesis.control import current_build_context

    data = model.SerializeToString()
    case = {"passes": entries, "input": {"name": "x", "shape": shape, "dtype": dtype},
            "error": f"{type(error).__name__}: {error}"}
    digest = hashlib.sha256(data + json.dumps(case["passes"], sort_keys=True, default=repr).encode()).hexdigest()
    path = FAILURES / f"{digest[:16]}.onnx"
    if not current_build_context().is_final:
        return path
    FAILURES.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps(case, indent=2, default=repr) + "\n")
    return path


# What a pass run first finds in a generated graph (its stats, as graphs()' ``expect`` counts them): a matcher that
# misses an exact spelling or takes a near one (a GELU constant 2% off) fails here even where numerics cannot tell.
FINDS = {"gelu_precision": lambda stats: {f"gelu {k}": v for k, v in stats["found"].items() if v and k != "gelu_node"},
         "fold_affine_into_conv": lambda stats: {"convs": stats["convs"]} if stats["convs"] else {}}
FINDS_KEYS = {"gelu_precision": {"gelu erf", "gelu tanh"}, "fold_affine_into_conv": {"convs"}}


def random_graphs_through_random_passes(folder, outcomes, focus, data):
    """The property, run by the tests below (which then check what it exercised): not collected by itself.
    ``focus``: a pass name; the graph holds what it rewrites and the pass list has it, with arguments that fit."""
    model, shape, dtype, expect = data.draw(graphs(focus), label="graph")
    entries = data.draw(st.lists(graph_pass_entries(model), min_size=0 if focus else 1, max_size=2), label="passes")
    if focus:
        entries.insert(data.draw(st.integers(0, len(entries)), label="at"),
                       data.draw(graph_pass_entries(model, focus), label="focus"))
    tolerance = TOLERANCE if dtype == "float32" else FP16_TOLERANCE
    recipe_data = {"model": {"onnx": "model.onnx"}, "input": {"name": "x", "shape": shape, "dtype": dtype},
                   "passes": entries}
    try:
        recipe = parse_recipe(recipe_data, folder / "fuzz.yaml")
    except UserError:
        outcomes["recipe rejected"] += 1
        return
    passes = [(p, s.where, s.on_fail) for p, s in zip(recipe.build_passes(), recipe.passes)]
    inputs = make_inputs(shape, 2, seed=0, dtype=dtype)
    original = onnx.ModelProto()
    original.CopyFrom(model)
    try:
        result = run_pipeline(model, passes, inputs=inputs, input_name="x", tolerance=tolerance)
    except UserError as e:
        assert "\n" not in str(e).strip()
        if not any(re.search(r, str(e)) for r in DOCUMENTED_REFUSALS):
            path = save_failure(original, entries, shape, dtype, e)
            raise AssertionError(f"a valid graph refused with an undocumented UserError: {e} (saved: {path})") from e
        outcomes["documented refusal"] += 1
        return
    except (VerificationFailed, PassError) as e:
        # a verified pass that breaks numerics on a valid graph, or crashes on it: a bug in the pass
        assert "\n" not in str(e).strip()
        path = save_failure(original, entries, shape, dtype, e)
        raise AssertionError(f"{type(e).__name__}: {e} (graph saved: {path}; passes and input beside it in "
                             f"{path.with_suffix('.json').name})") from e
    for r in result.records:
        # on_fail: skip goes back to the graph before a pass that raised or failed verification: on a valid graph
        # either is a bug in the pass all the same
        if r.status == "skipped":
            what = r.stats.get("error") or f"failed verification {r.verify}"
            path = save_failure(original, entries, shape, dtype, AssertionError(f"{r.name}: {what}"))
            raise AssertionError(f"pass {r.name} ({r.where}) skipped under on_fail: skip: {what} (graph saved: "
                                 f"{path})")
    first = result.records[0]
    if first.name in FINDS:  # it saw the graph as generated: what it must find there is known
        got = FINDS[first.name](first.stats)
        want = {k: v for k, v in expect.items() if v and k in FINDS_KEYS[first.name]}
        if got != want:
            path = save_failure(original, entries, shape, dtype, AssertionError(f"found {got}, made {want}"))
            raise AssertionError(f"{first.name} found {got} in a graph made with {want}: {first.stats} (graph saved: "
                                 f"{path})")
        outcomes[f"found as made: {first.name}"] += 1
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    cmp = compare_outputs(Runner(original, "x").run(inputs), Runner(out, "x").run(inputs), tolerance)
    if not cmp.passed:
        path = save_failure(original, entries, shape, dtype, AssertionError(cmp.describe()))
        raise AssertionError(f"output outside tolerance of the input model: {cmp.describe()} (saved: {path})")
    outcomes["verified"] += 1
    for r in result.records:  # which rewrites the random graphs exercised
        if r.changed:
            outcomes[f"rewrote: {r.name}"] += 1


RANDOM = settings(FUZZ, max_examples=100 * SCALE)(given(data=st.data())(random_graphs_through_random_passes))
FOCUSED = settings(FUZZ, max_examples=20 * SCALE)(given(data=st.data())(random_graphs_through_random_passes))


def test_random_graphs_through_random_passes(folder):
    """The property on its derandomized examples, then what they came to: most verified, else the generator tests
    little. One test, so that -k, -x or a failure cannot leave the counts of a partial run to be judged."""
    outcomes: collections.Counter = collections.Counter()
    RANDOM(folder, outcomes, None)
    print(f"\nrandom graphs through random passes: {dict(sorted(outcomes.items()))}")
    runs = outcomes["verified"] + outcomes["recipe rejected"] + outcomes["documented refusal"]
    assert outcomes["verified"] >= runs / 2, dict(outcomes)


@pytest.mark.parametrize("name", REWRITING)
def test_each_rewriting_pass_rewrites_random_graphs(folder, name):
    """The property on graphs made to hold what pass ``name`` rewrites, with the pass (arguments derived from the
    graph) somewhere in a random pass list: it must rewrite at least one of them, else the fuzz would let its bugs
    through unnoticed (arguments or graphs that stopped matching it). Parametrized by REWRITING, so a new built-in
    pass gets its case the day it is added (and fails it until the generator can make graphs it rewrites)."""
    outcomes: collections.Counter = collections.Counter()
    FOCUSED(folder, outcomes, name)
    print(f"\n{name}: {dict(sorted(outcomes.items()))}")
    assert outcomes[f"rewrote: {name}"], f"{name} never rewrote a random graph made for it: {dict(outcomes)}"


def test_rewriting_passes_are_the_built_in_ones():
    """REWRITING names every built-in pass but those that never change a graph, and nothing else: a new pass is
    in it (so the fuzz must exercise it) the day it is added."""
    assert "insert_fusion_breaker" in REWRITING and "softmax_transpose" in REWRITING
    assert set(NEVER_REWRITES) <= set(PASSES)
    assert all(cls.__module__ == f"graphopt.passes.{name}" for name, cls in PASSES.items())


# Cases the fuzzer found (softmax_transpose raised on both; fixed in passes/softmax_transpose.py).
FOUND = {
    "a Transpose without perm before the Softmax": (
        [oh.make_node("Transpose", ["x"], ["t"]), oh.make_node("Softmax", ["t"], ["y"], axis=-1)], [5, 4, 3, 2]),
    "two last-axis softmaxes in a row": (
        [oh.make_node("Softmax", ["x"], ["a"], axis=-1), oh.make_node("Softmax", ["a"], ["y"], axis=3)], [2, 3, 4, 5]),
    "a softmax output that is a graph output and read inside": (
        [oh.make_node("Softmax", ["x"], ["s"], axis=-1), oh.make_node("Transpose", ["s"], ["y"], perm=[0, 1, 3, 2])],
        [2, 3, 5, 4]),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_found_by_the_fuzzer(case):
    nodes, out_shape = FOUND[case]
    outputs = [oh.make_tensor_value_info("y", 1, out_shape)]
    if any("s" in n.output for n in nodes):
        outputs.insert(0, oh.make_tensor_value_info("s", 1, [2, 3, 4, 5]))
    model = oh.make_model(oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", 1, [2, 3, 4, 5])], outputs),
                          opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    result = run_pipeline(model, [(PASSES["softmax_transpose"](), "passes[0]", "stop")],
                          inputs=make_inputs([2, 3, 4, 5], 1, 0), input_name="x", tolerance=TOLERANCE)
    assert result.records[0].changed and result.final_verify["passed"]
    assert [o.name for o in result.model.graph.output] == [o.name for o in outputs]
