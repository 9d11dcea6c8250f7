"""Every pass, and every recipe's pass list, over a zoo of architectures (``tests/corpus.py``): no crash, a valid
output (``onnx.checker`` full check, onnxruntime loads it), outputs equal to the input model's within tolerance,
and a pass that matches nothing leaves the model node for node and byte for byte as it was.

Prints a model x pass table at the end of the session (and writes it to ``runs/corpus-table.md``). Codes, one per
pass of the configuration: ``V`` rewrote the graph, verified against onnxruntime; ``M`` matched and recorded
compiler configs only, graph unchanged; ``.`` matched nothing, graph unchanged; ``C`` rewrote a graph with
custom-domain ops onnxruntime cannot run: checker-valid, not run; ``X`` failed (the test fails too).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from corpus import ZOO, custom_models, export_zoo_model, pass_configs
from graphopt.core.errors import GraphoptError, UserError
from graphopt.core.onnx_files import load_model
from graphopt.core.pipeline import run_pipeline
from graphopt.commands.recipe_schema import PassSpec, build_pass
from graphopt.core.tolerance import Tolerance
from graphopt.core.verify import compare_outputs
from graphopt.core.runner import Runner
from graphopt.core.feeds import make_inputs

REPO = Path(__file__).resolve().parent.parent
CONFIGS = pass_configs(REPO)
# fp32 random-weight models; rewrites reorder a little arithmetic at most (onnxsim's folding, Softmax on a
# transposed axis): tight absolute and cosine bounds, and the argmax must not move.
TOLERANCE = Tolerance(max_abs=1e-4, max_rel=None, cosine=0.99999, top1_agreement=1.0)
FP16_TOLERANCE = Tolerance(max_abs=1e-2, max_rel=None, cosine=0.9999, top1_agreement=1.0)
CUSTOM = custom_models()
MODELS = [m.name for m in ZOO] + list(CUSTOM)
TABLE: dict[str, dict[str, str]] = {}
TIMES: dict[str, float] = {}


def _load(name: str) -> tuple[onnx.ModelProto, list[int], bool]:
    if name in CUSTOM:
        return CUSTOM[name]
    spec = next(m for m in ZOO if m.name == name)
    return load_model(export_zoo_model(spec)), spec.input_shape, True


def _passes(entries: list[dict]) -> list:
    specs = [PassSpec(e["pass"], {k: v for k, v in e.items() if k not in ("pass", "on_fail")},
                      e.get("on_fail", "stop"), f"passes[{i}]") for i, e in enumerate(entries)]
    return [(build_pass(s), s.where, s.on_fail) for s in specs]


def _weights(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    return {t.name: (t.data_type, tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes())
            for t in model.graph.initializer}


def _attribute(a: onnx.AttributeProto):
    if a.type == onnx.AttributeProto.TENSOR:  # gs writes an empty tensor name explicitly: compare the values
        return (a.t.data_type, tuple(a.t.dims), onnx.numpy_helper.to_array(a.t).tobytes())
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return a.SerializeToString(deterministic=True)
    return repr(onnx.helper.get_attribute_value(a))


def _nodes(model: onnx.ModelProto) -> list[tuple]:
    """Every node as (op, domain, name, inputs, outputs, attributes), in order: equal lists = the same graph."""
    return [(n.op_type, n.domain, n.name, tuple(n.input), tuple(n.output),
             tuple(sorted((a.name, _attribute(a)) for a in n.attribute))) for n in model.graph.node]


def _run_config(model: onnx.ModelProto, entries: list[dict], inputs, ref, runnable: bool) -> tuple[str, str | None]:
    """(cell, failure or None) for one pass configuration on one model."""
    tolerance = FP16_TOLERANCE if inputs is not None and inputs[0].dtype == np.float16 else TOLERANCE
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        result = run_pipeline(copy, _passes(entries), inputs=None, input_name="input", tolerance=TOLERANCE)
    except GraphoptError as e:
        return "X", f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - exactly what the corpus is looking for
        return "X", f"crashed with {type(e).__name__}: {e}"
    codes = "".join("V" if r.changed else "M" if r.configs else "." for r in result.records)
    out = result.model
    if not any(r.changed for r in result.records):
        if _nodes(out) != _nodes(model) or _weights(out) != _weights(model):
            return "X" * len(codes), "no pass reported a change, yet the model differs"
        return codes, None
    try:
        onnx.checker.check_model(out, full_check=True)
    except onnx.checker.ValidationError as e:
        return "X" * len(codes), f"output fails onnx.checker: {str(e).splitlines()[0]}"
    if not runnable:
        return codes.replace("V", "C"), None
    try:
        got = Runner(out, "input").run(inputs)
    except UserError as e:
        return "X" * len(codes), f"onnxruntime rejects the output: {e}"
    cmp = compare_outputs(ref, got, tolerance)
    if not cmp.passed:
        return "X" * len(codes), f"outputs differ: {cmp.describe()}"
    return codes, None


@pytest.fixture(scope="module", autouse=True)
def corpus_table(request):
    """Print the model x pass table at the end of the session and write it to runs/corpus-table.md."""
    yield
    if not TABLE:
        return
    lines = table_lines()
    out = REPO / "runs" / "corpus-table.md"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
    except OSError:
        pass

    class Summary:
        @staticmethod
        def pytest_terminal_summary(terminalreporter):
            terminalreporter.write_sep("=", "robustness corpus: model x pass")
            for line in lines:
                terminalreporter.write_line(line)
            terminalreporter.write_line(f"(also in {out})")

    request.config.pluginmanager.register(Summary(), "graphopt_corpus_table")


def table_lines() -> list[str]:
    labels = list(CONFIGS)
    lines = ["| model | opset | batch | " + " | ".join(labels) + " | s |",
             "|---|---|---|" + "---|" * len(labels) + "---|"]
    for name, row in TABLE.items():
        spec = next((m for m in ZOO if m.name == name), None)
        opset, batch = (spec.opset, spec.batch) if spec else ("-", "custom")
        lines.append(f"| {name} | {opset} | {batch} | " + " | ".join(row.get(l, "") for l in labels)
                     + f" | {TIMES.get(name, 0):.1f} |")
    lines.append("V rewritten + verified, M matched (compiler configs only), . unchanged, "
                 "C rewritten, checker-valid, not runnable (custom op), X failed")
    return lines


@pytest.mark.parametrize("name", MODELS)
def test_every_pass_on(name):
    t0 = time.perf_counter()
    model, shape, runnable = _load(name)
    fp16 = model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    inputs = make_inputs(shape, 1, seed=0, dtype="float16" if fp16 else "float32")
    ref = Runner(model, "input").run(inputs) if runnable else None
    row = TABLE.setdefault(name, {})
    failures = []
    for label, entries in CONFIGS.items():
        cell, failure = _run_config(model, entries, inputs, ref, runnable)
        row[label] = cell
        if failure:
            failures.append(f"{label}: {failure}")
    TIMES[name] = time.perf_counter() - t0
    assert not failures, f"{name}:\n" + "\n".join(failures)


def test_the_zoo_is_diverse():
    """At least 15 architectures, opsets 11 to 20, dynamic and fixed batches, hand-built odd cases."""
    assert len({m.timm_name for m in ZOO if m.builder is None}) >= 15
    assert {m.opset for m in ZOO} == set(range(11, 21))
    assert {m.batch for m in ZOO} == {"dynamic", "fixed", "dynamic_hw"}
    assert {"custom_domain_op", "com_microsoft_ops", "unknown_shapes", "symbolic_dims"} <= set(CUSTOM)
    assert any(label.startswith("recipe:") for label in CONFIGS)


def test_custom_domain_model_cannot_be_verified_and_says_so():
    """onnxruntime cannot run an unknown domain's op: verification stops with one clear line, not a crash."""
    model, shape, _ = CUSTOM["custom_domain_op"]
    with pytest.raises(UserError, match=r"custom-domain ops \(org\.graphopt\.test::FancyActivation\).*--no-verify"):
        run_pipeline(model, _passes([{"pass": "softmax_transpose"}]), inputs=make_inputs(shape, 1, 0),
                     input_name="input", tolerance=TOLERANCE)


def test_custom_domain_node_survives_every_pass_untouched():
    model, _, _ = CUSTOM["custom_domain_op"]
    want = [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    for label, entries in CONFIGS.items():
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        out = run_pipeline(copy, _passes(entries), inputs=None, input_name="input").model
        got = [n for n in out.graph.node if n.domain not in ("", "ai.onnx")]
        assert [(n.op_type, n.domain, list(n.attribute)) for n in got] == \
            [(n.op_type, n.domain, list(n.attribute)) for n in want], label
        assert {o.domain: o.version for o in out.opset_import}.get("org.graphopt.test") == 1, label


def test_outputs_of_the_zoo_are_finite():
    """A sanity check of the corpus itself: random weights give finite, non-constant outputs."""
    for spec in ZOO[:3]:
        model = load_model(export_zoo_model(spec))
        out = next(iter(Runner(model, "input").run(make_inputs(spec.input_shape, 1, 0)).values()))
        assert np.isfinite(out).all() and out.std() > 0


@pytest.mark.parametrize("name", [m.name for m in ZOO if m.batch != "fixed"])
def test_fold_constants_keeps_the_dynamic_batch(name):
    """fold_constants folds shapes with a symbolic batch (and writes 0 for it in Reshape targets): the output must
    serve other batch sizes than the one verification ran, as the input model does."""
    model, shape, _ = _load(name)
    out = run_pipeline(model, _passes([{"pass": "fold_constants"}]), inputs=None, input_name="input").model
    inputs = make_inputs([3, *shape[1:]], 1, seed=1)
    cmp = compare_outputs(Runner(model, "input").run(inputs), Runner(out, "input").run(inputs), TOLERANCE)
    assert cmp.passed, cmp.describe()
