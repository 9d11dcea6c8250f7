"""The differential node corpus: every ONNX backend node test case (``onnx.backend.test.case.node``) that
onnxruntime runs, each pass run over it through ``run_pipeline``, and the result checked by this harness itself.

Why the harness verifies and not the pipeline: the pipeline's ``Runner`` feeds one float input, and most node test
cases have several inputs of any type (ints, strings, sequences, optionals). Here each case is run on its own feeds
(a dict of every input) and compared with the *input* model's onnxruntime outputs (not the ``.pb`` expected outputs:
a pass owes equivalence to the model it was given, not to onnx's reference implementation).

Cached under ``$GRAPHOPT_CACHE/node-corpus/<onnx+onnxruntime versions>/`` (the tests' conftest points that at a
persistent folder), in ONNX's own formats, as onnx's backend test data stores them, and never as pickles (a cache
folder is a file another user or process could plant, and unpickling runs code): one folder per kept case under
``cases/`` with ``model.onnx``, ``input_<i>.pb`` (the feeds) and ``ref_<i>.pb`` (the reference outputs), each value
a serialized ``TensorProto`` (``onnx.numpy_helper.from_array``, strings included; a numpy scalar as a 0-d one;
a ``TensorProto`` that onnx's test case gives as an input, as is), ``SequenceProto`` (``from_list``), ``MapProto``
(``from_dict``) or, for a missing optional, ``OptionalProto`` (``from_optional``); and ``case.json`` (the input
and output names with each value's kind, so the loader knows which proto to parse, and the checker level the
input model passes). A value is stored only if it reads back exactly as it was (dtype,
shape, bytes, element types): what the sweep feeds onnxruntime and compares with is what the build had; a case
whose values would not is dropped, with the reason. Every file is written to a temporary name and renamed;
``index.json`` (kept names, and why each other case was dropped), written last, marks a complete corpus.
Building it (collecting the test cases, a reference session each) takes about 15 s on two processes; a warm
run skips it and reads the whole corpus back in about 0.4 s.

Work runs in a spawned process pool (``sweep``): onnxruntime's thread pools do not survive ``fork``, and a spawned
worker's pass registry holds the built-in passes only, not the test-only passes other test modules register.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx

__all__ = ["CORPUS_FORMAT", "Config", "Row", "CATEGORIES", "FAILURES", "corpus_dir", "ensure_corpus",
           "load_case", "pass_configs", "sweep", "classify", "outputs_equal", "graph_structure", "table_lines",
           "quiet", "RTOL", "ATOL", "builtin_pass_names", "symbolic_first_dim", "DYNAMIC_SUFFIX"]

# Bump when what a cached case holds or how it is stored changes, so stale caches are rebuilt (an older format's
# folder has another name: it is never read). 4: ONNX protobuf values and JSON, no pickles. 5: a case the pipeline
# cannot carry through no pass is kept (its failure is every pass's).
CORPUS_FORMAT = 5

# Float tolerances, |got - ref| <= ATOL + RTOL * |ref| element-wise (NaN where the reference has NaN, infinities
# equal). The passes are exact rewrites or reorder a little arithmetic (Gelu fused from its erf form, a folded
# constant): fp32/fp64 get a few ulps of headroom on values of order 1-100; fp16/bfloat16 outputs (eps 1e-3 and
# 8e-3) a few of their own ulps. Integer, bool and string outputs must be equal.
RTOL = {"f8": 1e-4, "f4": 1e-4, "f2": 1e-2, "bf16": 2e-2}
ATOL = {"f8": 1e-5, "f4": 1e-5, "f2": 1e-3, "bf16": 1e-2}

# What happened to one (pass configuration, model); the last four fail the test.
CATEGORIES = ("unchanged", "verified", "clean_error", "crash", "invalid", "changed_outputs", "unreported_edit")
FAILURES = ("crash", "invalid", "changed_outputs", "unreported_edit")

# The pipeline raises these PassErrors itself, about what a pass left behind (not a pass's own, deliberate error).
_PIPELINE_INVALID = ("produced an invalid graph", "left a graph that cannot be sorted")
_PIPELINE_UNREPORTED = "reported no change but modified the graph"
_PIPELINE_BAD_CONFIGS = "returned unusable compiler configs"


def quiet() -> None:
    """Silence what a sweep would print thousands of times: onnxruntime's C++ log, onnx-graphsurgeon's logger,
    numpy's floating-point warnings (node tests divide by zero on purpose), Python warnings."""
    import onnxruntime as ort
    import onnx_graphsurgeon as gs

    ort.set_default_logger_severity(4)  # 4 = fatal only: a rejected model logs an error (3)
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL
    np.seterr(all="ignore")
    warnings.simplefilter("ignore")
    logging.getLogger("graphopt").setLevel(logging.CRITICAL)


def corpus_dir() -> Path:
    import onnxruntime as ort

    from graphopt.commands.export import cache_dir

    key = hashlib.sha256(json.dumps([onnx.__version__, ort.__version__, CORPUS_FORMAT]).encode()).hexdigest()[:12]
    return cache_dir() / "node-corpus" / f"onnx{onnx.__version__}-ort{ort.__version__}-{key}"


def _session(data: bytes):
    """An onnxruntime session with ``graphopt.core.verify.comparison_session``'s options (CPU, basic optimisations
    only, Pad_Fusion off), on one thread: the pool already keeps every core busy with one model each."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"], disabled_optimizers=["Pad_Fusion"])


def _run(session, feeds: dict[str, Any]) -> dict[str, Any]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _checker_level(model: onnx.ModelProto) -> str | None:
    """The strictest ``onnx.checker`` level the input model passes: a rewritten model is held to the same one."""
    for level, full in (("full", True), ("plain", False)):
        try:
            onnx.checker.check_model(model, full_check=full)
            return level
        except Exception:  # noqa: BLE001 - onnx raises ValidationError and, from shape inference, others
            continue
    return None


# ---------------------------------------------------------------------------------------------------------------
# The cache: ONNX value protos and JSON


def _case_dir(root: Path, name: str) -> Path:
    return root / "cases" / name


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _value_kind(value: Any) -> str:
    """How a value is stored. Besides arrays, sequences, maps and a missing optional, onnx's node test cases give
    some inputs as a ``TensorProto`` (Cast to and from float8, int4, ...) or a numpy scalar (the window functions,
    Range): onnxruntime refuses both as feeds, and the case is dropped with its reason, but they are stored as they
    are so that the reason is onnxruntime's, as it always was."""
    if value is None:
        return "optional"  # a missing optional: the one value only an OptionalProto holds
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, np.ndarray):
        return "tensor"
    if isinstance(value, np.generic):
        return "scalar"  # a 0-d TensorProto, read back as a numpy scalar
    if isinstance(value, onnx.TensorProto):
        return "tensor_proto"  # the TensorProto itself, read back as one
    raise TypeError(f"a {type(value).__name__} is no ONNX value")


def _encode(value: Any) -> tuple[str, bytes]:
    """(kind, serialized proto) of one feed or output."""
    from onnx import numpy_helper

    kind = _value_kind(value)
    if kind == "tensor_proto":
        return kind, value.SerializeToString()
    if kind == "scalar":
        value = np.asarray(value)
    proto = {"optional": numpy_helper.from_optional, "sequence": numpy_helper.from_list,
             "map": numpy_helper.from_dict, "tensor": numpy_helper.from_array,
             "scalar": numpy_helper.from_array}[kind](value)
    return kind, proto.SerializeToString()


_PROTOS = {"tensor": (onnx.TensorProto, "to_array"), "scalar": (onnx.TensorProto, "to_array"),
           "tensor_proto": (onnx.TensorProto, None), "sequence": (onnx.SequenceProto, "to_list"),
           "map": (onnx.MapProto, "to_dict"), "optional": (onnx.OptionalProto, "to_optional")}


def _decode(kind: str, data: bytes) -> Any:
    from onnx import numpy_helper

    cls, convert = _PROTOS[kind]  # a kind this module never writes is a KeyError: the cache is not ours
    proto = cls()
    proto.ParseFromString(data)
    if convert is None:
        return proto
    value = getattr(numpy_helper, convert)(proto)
    return value[()] if kind == "scalar" else value


def _same(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same value exactly: types, dtypes, shapes, bytes, and the elements' types of an
    object (string) array; sequences and maps element by element."""
    if type(a) is not type(b):
        return False
    if a is None:
        return True
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b)) \
            and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, onnx.TensorProto):
        return a == b
    if isinstance(a, np.generic):
        return a.tobytes() == b.tobytes()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        x, y = a.ravel().tolist(), b.ravel().tolist()
        return x == y and all(type(i) is type(j) for i, j in zip(x, y))
    return a.tobytes() == b.tobytes()


def _store(folder: Path, prefix: str, values: dict[str, Any]) -> list[list[str]]:
    """Write each value as ``<prefix>_<i>.pb``; [[name, kind], ...] for ``case.json``. Raises ValueError for a value
    that does not read back exactly as it is (or has no ONNX proto)."""
    entries = []
    for i, (name, value) in enumerate(values.items()):
        try:
            kind, data = _encode(value)
            same = _same(value, _decode(kind, data))
        except Exception as e:  # noqa: BLE001 - numpy_helper raises TypeError, ValueError, NotImplementedError
            raise ValueError(f"{name!r} has no ONNX value proto: {_line(e)}") from e
        if not same:
            raise ValueError(f"{name!r} does not read back as it was from its ONNX {kind} proto")
        _write(folder / f"{prefix}_{i}.pb", data)
        entries.append([name, kind])
    return entries


def _load_values(folder: Path, prefix: str, entries: list[list[str]]) -> dict[str, Any]:
    return {name: _decode(kind, (folder / f"{prefix}_{i}.pb").read_bytes()) for i, (name, kind) in enumerate(entries)}


def _meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "case.json").read_text())


def _reference(args: tuple[str, str]) -> tuple[str, str | None]:
    """Worker: run one collected case in onnxruntime; store its reference outputs (kept) or say why not."""
    root, name = Path(args[0]), args[1]
    quiet()
    folder = _case_dir(root, name)
    meta = _meta(folder)
    data = (folder / "model.onnx").read_bytes()
    feeds = _load_values(folder, "input", meta["inputs"])

    def drop(reason: str) -> tuple[str, str]:
        shutil.rmtree(folder, ignore_errors=True)
        return name, reason

    try:
        session = _session(data)
    except Exception as e:  # noqa: BLE001 - an op onnxruntime 1.x does not implement, a type it lacks
        return drop(f"load: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}")
    try:
        ref = _run(session, feeds)
    except Exception as e:  # noqa: BLE001
        return drop(f"run: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}")
    model = onnx.load_from_string(data)
    try:
        meta["outputs"] = _store(folder, "ref", ref)
    except ValueError as e:
        return drop(f"reference outputs: {e}")
    meta["check"] = _checker_level(model)
    _write(folder / "case.json", json.dumps(meta).encode())
    return name, None


def _worker_init() -> None:
    """A worker prints nothing: onnxsim's C++ writes warnings for every op it cannot fold straight to fd 1 and 2
    (its exceptions still reach the parent, pickled)."""
    quiet()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _pool(workers: int | None = None) -> ProcessPoolExecutor:
    env = os.environ
    # The workers' passes infer shapes of ~1400 tiny models: keep them out of the shape cache's 256 entries.
    env.setdefault("GRAPHOPT_SHAPE_CACHE", "0")
    return ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=get_context("spawn"),
                               initializer=_worker_init)


def ensure_corpus(pool: ProcessPoolExecutor) -> dict[str, Any]:
    """The index of the cached corpus (``{"kept": [...], "dropped": {name: reason}}``), built first if missing."""
    root = corpus_dir()
    index = root / "index.json"
    if index.is_file():
        return json.loads(index.read_text())
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    dropped: dict[str, str] = {}
    names = []
    for case in cases:
        if not case.data_sets:
            dropped[case.name] = "no data set"
            continue
        inputs = case.data_sets[0][0]
        declared = [i.name for i in case.model.graph.input]
        if len(inputs) > len(declared):
            dropped[case.name] = f"{len(inputs)} input values for {len(declared)} graph inputs"
            continue
        feeds = dict(zip(declared, inputs))
        folder = _case_dir(root, case.name)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            entries = _store(folder, "input", feeds)
        except ValueError as e:
            shutil.rmtree(folder, ignore_errors=True)
            dropped[case.name] = f"feeds: {e}"
            continue
        _write(folder / "model.onnx", case.model.SerializeToString())
        _write(folder / "case.json", json.dumps({"inputs": entries, "outputs": None, "check": None}).encode())
        names.append(case.name)
    for name, reason in pool.map(_reference, [(str(root), n) for n in names], chunksize=16):
        if reason is not None:
            dropped[name] = reason
    kept = sorted(n for n in names if n not in dropped)
    data = {"onnx": onnx.__version__, "kept": kept, "dropped": dict(sorted(dropped.items())),
            "collected": len(cases)}
    tmp = index.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(index)
    return data


def load_case(name: str, root: Path | None = None) -> dict[str, Any]:
    """A kept case: ``{"model": bytes, "feeds": {name: value}, "ref": {name: value}, "check": level}``, the values
    numpy arrays (bfloat16 and the other non-numpy types as ``ml_dtypes`` arrays, strings as object arrays of
    ``str``), lists of them, dicts, or None, as onnxruntime takes and returns them."""
    folder = _case_dir(root or corpus_dir(), name)
    meta = _meta(folder)
    if meta.get("outputs") is None:
        raise FileNotFoundError(f"{folder}: the case has no reference outputs (not a kept case)")
    return {"model": (folder / "model.onnx").read_bytes(), "feeds": _load_values(folder, "input", meta["inputs"]),
            "ref": _load_values(folder, "ref", meta["outputs"]), "check": meta["check"]}


# ---------------------------------------------------------------------------------------------------------------
# Pass configurations


@dataclass(frozen=True)
class Config:
    """One way to run a pass: ``args`` as a recipe gives them; ``first_op_path``: ``path`` is the op type of the
    model's first node (node test models are one node: a fixed path would match almost none of them)."""

    label: str
    pass_name: str
    args: dict[str, Any] = field(default_factory=dict)
    first_op_path: bool = False

    def arguments(self, model: onnx.ModelProto) -> dict[str, Any] | None:
        if not self.first_op_path:
            return dict(self.args)
        if not model.graph.node:
            return None
        return {**self.args, "path": [model.graph.node[0].op_type]}


def pass_configs(names: Iterable[str]) -> list[Config]:
    """Every pass in ``names`` with the corpus's generic arguments (``tests/corpus.py`` ``PASS_ARGS``), plus a
    second configuration where a mode changes what the pass does."""
    from corpus import PASS_ARGS

    configs: list[Config] = []
    for name in names:
        configs.append(Config(name, name, PASS_ARGS.get(name, {})))
        if name == "gelu_precision":  # PASS_ARGS fuses; detection alone must never touch the graph
            configs.append(Config("gelu_precision(detect)", name, {"mode": "high_precision"}))
        elif name == "insert_fusion_breaker":  # a breaker on every float model: Pow, and Identity (any dtype)
            configs.append(Config("insert_fusion_breaker(first op, Pow)", name, {"op": "Pow"}, first_op_path=True))
            configs.append(Config("insert_fusion_breaker(first op, Identity)", name, {"op": "Identity"},
                                  first_op_path=True))
        elif name == "mixlist":  # measured: the fp16 emulation runs the graph; few samples and trials keep it fast
            configs.append(Config("mixlist(measured)", name, {"mode": "measured", "samples": 2, "node_trials": 2}))
    return configs


# ---------------------------------------------------------------------------------------------------------------
# Comparing models and outputs


def _array_key(a: np.ndarray) -> tuple:
    if a.dtype == object:
        return (str(a.dtype), a.shape, tuple(a.ravel().tolist()))
    return (str(a.dtype), a.shape, a.tobytes())


def _attribute(a: onnx.AttributeProto) -> Any:
    from onnx import numpy_helper

    if a.type == onnx.AttributeProto.TENSOR:  # gs writes an empty tensor name explicitly: compare the values
        return ("tensor", a.t.data_type, tuple(a.t.dims), _array_key(numpy_helper.to_array(a.t)))
    if a.type == onnx.AttributeProto.TENSORS:
        return ("tensors", tuple((t.data_type, tuple(t.dims), _array_key(numpy_helper.to_array(t))) for t in a.tensors))
    if a.type == onnx.AttributeProto.GRAPH:
        return ("graph", graph_structure(a.g))
    if a.type == onnx.AttributeProto.GRAPHS:
        return ("graphs", tuple(graph_structure(g) for g in a.graphs))
    if a.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS,
                  onnx.AttributeProto.TYPE_PROTO, onnx.AttributeProto.TYPE_PROTOS):
        return a.SerializeToString(deterministic=True)
    return ("value", a.ref_attr_name, repr(onnx.helper.get_attribute_value(a)))


def graph_structure(graph: onnx.GraphProto) -> tuple:
    """What ``graph`` computes, comparable with ``==``: its nodes in order (op, domain, name, wiring, attributes,
    subgraphs recursively), initializers' names, types and values, the names of its inputs and outputs."""
    from onnx import numpy_helper

    nodes = tuple((n.op_type, n.domain, n.name, tuple(n.input), tuple(n.output),
                   tuple(sorted((a.name, _attribute(a)) for a in n.attribute))) for n in graph.node)
    inits = tuple(sorted((t.name, t.data_type, tuple(t.dims), _array_key(numpy_helper.to_array(t)))
                         for t in graph.initializer))
    sparse = tuple(sorted(t.SerializeToString(deterministic=True) for t in graph.sparse_initializer))
    return (nodes, inits, sparse, tuple(i.name for i in graph.input), tuple(o.name for o in graph.output))


def _float_kind(a: np.ndarray) -> str | None:
    if a.dtype.kind == "f":
        return f"f{a.dtype.itemsize}"
    if "bfloat16" in str(a.dtype):
        return "bf16"
    return None


def outputs_equal(ref: Any, got: Any, where: str = "") -> str | None:
    """None when ``got`` equals ``ref`` (arrays, sequences of them, optionals, maps) within the module's tolerances;
    otherwise one line saying where and how they differ."""
    if ref is None or got is None:
        return None if ref is None and got is None else f"{where}: {'None' if ref is None else 'a value'} became " \
            f"{'None' if got is None else 'a value'}"
    if isinstance(ref, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(ref):
            return f"{where}: a sequence of {len(ref)} became {type(got).__name__} " \
                f"{len(got) if isinstance(got, (list, tuple)) else ''}".rstrip()
        for k, (r, g) in enumerate(zip(ref, got)):
            if (why := outputs_equal(r, g, f"{where}[{k}]")) is not None:
                return why
        return None
    if isinstance(ref, dict):
        if not isinstance(got, dict) or set(ref) != set(got):
            return f"{where}: map keys differ"
        for k in ref:
            if (why := outputs_equal(ref[k], got[k], f"{where}[{k!r}]")) is not None:
                return why
        return None
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.dtype != got.dtype or ref.shape != got.shape:
        return f"{where}: {ref.dtype}{list(ref.shape)} became {got.dtype}{list(got.shape)}"
    kind = _float_kind(ref)
    if kind is None:  # integers, bool, strings: exact
        if ref.dtype == object:
            same = ref.ravel().tolist() == got.ravel().tolist()
        else:
            same = ref.tobytes() == got.tobytes()
        return None if same else f"{where}: {int((ref != got).sum())} of {ref.size} values differ ({ref.dtype})"
    r, g = ref.astype(np.float64), got.astype(np.float64)
    rnan, gnan = np.isnan(r), np.isnan(g)
    if (rnan != gnan).any():
        return f"{where}: NaN at {int((rnan != gnan).sum())} other positions"
    fin = np.isfinite(r)
    if (r[~fin & ~rnan] != g[~fin & ~rnan]).any() or not np.isfinite(g[fin]).all():
        return f"{where}: infinities differ"
    err = np.abs(r[fin] - g[fin])
    bad = err > ATOL[kind] + RTOL[kind] * np.abs(r[fin])
    if bad.any():
        return f"{where}: {int(bad.sum())} of {ref.size} values outside atol {ATOL[kind]:g} + rtol {RTOL[kind]:g} " \
            f"(max |diff| {float(err.max()):.3g})"
    return None


# ---------------------------------------------------------------------------------------------------------------
# One (pass, model)


@dataclass(frozen=True)
class Row:
    model: str
    config: str
    category: str
    detail: str = ""
    seconds: float = 0.0


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _classify_error(e: Exception) -> tuple[str, str]:
    from graphopt.core.errors import GraphoptError, PassError

    if not isinstance(e, GraphoptError):
        return "crash", _line(e)
    if isinstance(e, PassError):
        text = str(e)
        if _PIPELINE_UNREPORTED in text:
            return "unreported_edit", _line(e)
        if any(s in text for s in _PIPELINE_INVALID):
            return "invalid", _line(e)
        if _PIPELINE_BAD_CONFIGS in text:
            return "crash", _line(e)
        cause = e.__cause__
        if cause is not None and not isinstance(cause, GraphoptError):  # the pipeline's wrapper of a raw exception
            return "crash", _line(e)
    return "clean_error", _line(e)


def classify(config: Config, data: bytes, case: dict[str, Any]) -> tuple[str, str]:
    """(category, one-line detail) of running ``config`` over the model ``data`` (a cached ``case``)."""
    from graphopt.core.pass_infra import get_pass
    from graphopt.core.pipeline import run_pipeline

    model = onnx.load_from_string(data)
    args = config.arguments(model)
    if args is None:
        return "unchanged", "no node to start a path at"
    try:
        p = get_pass(config.pass_name)(**args)
    except (TypeError, ValueError) as e:  # the configuration does not fit this model (e.g. a path op name)
        return "clean_error", f"configuration refused: {_line(e)}"
    try:
        result = run_pipeline(model, [(p, "passes[0]", "stop")], inputs=None, input_name=None)
    except Exception as e:  # noqa: BLE001 - sorting errors is what the corpus is for
        return _classify_error(e)
    try:
        out = result.model
    except Exception as e:  # noqa: BLE001 - the graph the pass left cannot even be exported
        return "invalid", f"export of the result failed: {_line(e)}"
    if not result.records[0].changed:
        if graph_structure(out.graph) != graph_structure(onnx.load_from_string(data).graph):
            return "unreported_edit", "reported no change, yet the model's nodes, initializers or subgraphs differ"
        return "unchanged", ""
    try:
        if case["check"] is not None:
            onnx.checker.check_model(out, full_check=case["check"] == "full")
    except Exception as e:  # noqa: BLE001
        return "invalid", f"onnx.checker ({case['check']}): {_line(e)}"
    try:
        session = _session(out.SerializeToString())
    except Exception as e:  # noqa: BLE001
        return "invalid", f"onnxruntime cannot load it: {_line(e)}"
    wanted = [i.name for i in session.get_inputs()]
    missing = [n for n in wanted if n not in case["feeds"]]
    if missing:
        return "invalid", f"the rewritten model wants inputs the case does not have: {missing}"
    try:
        got = _run(session, {n: case["feeds"][n] for n in wanted})
    except Exception as e:  # noqa: BLE001
        return "invalid", f"onnxruntime cannot run it: {_line(e)}"
    ref = case["ref"]
    if list(got) != list(ref):
        return "changed_outputs", f"outputs {list(ref)} became {list(got)}"
    for name in ref:
        if (why := outputs_equal(ref[name], got[name], repr(name))) is not None:
            return "changed_outputs", f"output {why}"
    return "verified", ""


DYNAMIC_SUFFIX = "@N"


def symbolic_first_dim(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` with the first dim of every input of rank >= 1 made a symbol (``N``; ``N<size>`` for an input whose
    first dim differed from the first input's), the outputs' dims unknown and the value_info dropped (their fixed
    dims would contradict it): the same computation on the same feeds, seen as a model with a dynamic batch, which is
    what shape inference, shape folding and every pass that reads shapes
    must get right too. None when no input has a dim to make symbolic."""
    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    changed = False
    firsts = [vi.type.tensor_type.shape.dim[0].dim_value for vi in model.graph.input
              if vi.type.HasField("tensor_type") and len(vi.type.tensor_type.shape.dim) >= 1
              and vi.type.tensor_type.shape.dim[0].HasField("dim_value")]
    first = firsts[0] if firsts else None
    for vi in variant.graph.input:
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is not None and t.HasField("shape") and len(t.shape.dim) >= 1:
            # One symbol per size: inputs whose first dims were equal share it, others do not (onnxruntime plans
            # memory on the promise that equal symbols are equal sizes, and the feeds keep the original sizes).
            size = t.shape.dim[0].dim_value if t.shape.dim[0].HasField("dim_value") else None
            t.shape.dim[0].Clear()
            t.shape.dim[0].dim_param = "N" if size in (None, first) else f"N{size}"
            changed = True
    if not changed:
        return None
    for vi in variant.graph.output:  # rank kept (onnx.checker wants a shape on graph outputs), every dim unknown
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                d.Clear()
    del variant.graph.value_info[:]
    return variant


def _dynamic_case(case: dict[str, Any]) -> dict[str, Any] | None:
    """The ``symbolic_first_dim`` variant of a loaded case, its reference outputs run anew (None when there is no
    variant, or onnxruntime does not run it: its type inference may need the fixed dims)."""
    variant = symbolic_first_dim(onnx.load_from_string(case["model"]))
    if variant is None:
        return None
    data = variant.SerializeToString()
    try:
        ref = _run(_session(data), case["feeds"])
    except Exception:  # noqa: BLE001 - not a model onnxruntime runs: no test of a pass
        return None
    return {"model": data, "feeds": case["feeds"], "ref": ref, "check": _checker_level(variant)}


def _sweep_models(args: tuple[str, list[str], list[Config]]) -> list[Row]:
    """Worker: every configuration over each of ``names``, and over each one's ``symbolic_first_dim`` variant
    (``<name>@N``)."""
    root, names, configs = Path(args[0]), args[1], args[2]
    rows = []
    for name in names:
        case = load_case(name, root)
        for label, variant in ((name, case), (name + DYNAMIC_SUFFIX, _dynamic_case(case))):
            if variant is None:
                continue
            for config in configs:
                t0 = time.perf_counter()
                category, detail = classify(config, variant["model"], variant)
                rows.append(Row(label, config.label, category, detail, time.perf_counter() - t0))
    return rows


def builtin_pass_names() -> list[str]:
    """The registry as a fresh process sees it (built-in and entry-point passes, none of the test-only passes
    that test modules register in the test session)."""
    from graphopt.core.pass_infra import all_passes

    return list(all_passes())


def sweep(configs: list[Config] | None = None, models: list[str] | None = None,
          workers: int | None = None) -> tuple[list[Row], dict[str, Any], float]:
    """Run every configuration (default: every built-in pass, ``pass_configs``) over every kept model (or
    ``models``) in a pool of ``workers`` processes (default: one per core). Returns the rows, the corpus index and
    the wall time in seconds."""
    t0 = time.perf_counter()
    with _pool(workers) as pool:
        index = ensure_corpus(pool)
        if configs is None:
            configs = pass_configs(pool.submit(builtin_pass_names).result())
        names = index["kept"] if models is None else models
        # Small chunks: a few models (Loop, Scan, big Resizes) cost far more than the rest.
        chunks = [names[i:i + 8] for i in range(0, len(names), 8)]
        root = str(corpus_dir())
        rows = [r for part in pool.map(_sweep_models, [(root, c, configs) for c in chunks]) for r in part]
    return rows, index, time.perf_counter() - t0


def table_lines(rows: list[Row], configs: list[str] | None = None) -> list[str]:
    """Per configuration: models, then the count of each category (a markdown table)."""
    labels = configs or list(dict.fromkeys(r.config for r in rows))
    counts = {label: dict.fromkeys(CATEGORIES, 0) for label in labels}
    for r in rows:
        counts[r.config][r.category] += 1
    lines = ["| pass | models | unchanged | changed and verified | clean errors | crash | invalid | "
             "changed outputs | unreported edits |", "|---|" + "---:|" * 8]
    for label in labels:
        c = counts[label]
        lines.append(f"| {label} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in CATEGORIES) + " |")
    return lines
