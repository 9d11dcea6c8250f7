"""Shapes for every tensor of a model, symbolic dims (a dynamic batch) included, and a cache of them.

Probing first (``shape_probe``), then onnxruntime's symbolic shape inference checked against sound sources
(``_drop_unsound``), then ONNX's own inference for what is left; see ``infer_shapes``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import onnx

from .errors import UserError
from .files import atomic_write_bytes, cache_dir
from .graph_walk import node_inputs, subgraphs

__all__ = ["infer_shapes", "symbolic_shape_inference"]


def symbolic_shape_inference():
    """onnxruntime's ``SymbolicShapeInference`` class, loaded from its file: importing it as
    ``onnxruntime.tools.symbolic_shape_infer`` runs ``onnxruntime/tools/__init__.py``, which imports torch when it
    is installed (seconds, and about 700 MB of RSS)."""
    import importlib.util
    import sys

    name = "_graphopt_symbolic_shape_infer"
    if name not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        path = Path(list(spec.submodule_search_locations)[0]) / "tools" / "symbolic_shape_infer.py"
        loaded = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].SymbolicShapeInference


# Inferred shapes are kept for models up to this size (the serialized model is the key's input), at most
# _SHAPE_CACHE_ENTRIES of them, the least recently used dropped first. The key also covers this file's source
# (the inference code) and the onnx / onnxruntime versions.
_SHAPE_CACHE_MAX_BYTES = 64 << 20
_SHAPE_CACHE_ENTRIES = 256


@functools.lru_cache(maxsize=1)
def _shape_cache_salt() -> bytes:
    """What besides the model decides inferred shapes: the onnx / onnxruntime versions and the inference code
    (this file, ``shape_probe.py`` and ``shape_arith.py``). Read once per process."""
    import onnxruntime

    return (f"onnx {onnx.__version__} ort {onnxruntime.__version__}\n".encode() + Path(__file__).read_bytes()
            + b"".join((Path(__file__).parent / name).read_bytes() for name in ("shape_probe.py", "shape_arith.py")))


def _shape_cache_path(data: bytes) -> Path | None:
    if os.environ.get("GRAPHOPT_SHAPE_CACHE", "1") == "0":
        return None
    import hashlib

    h = hashlib.sha256(_shape_cache_salt())
    h.update(data)
    return cache_dir() / "shapes" / f"{h.hexdigest()[:32]}.onnx"


def _shape_cache_store(path: Path, model: onnx.ModelProto) -> None:
    """Best effort: a cache that cannot be written (read-only home, full disk) only costs the next run time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, model.SerializeToString())
        entries = sorted(path.parent.glob("*.onnx"), key=lambda e: e.stat().st_mtime)
        for old in entries[:-_SHAPE_CACHE_ENTRIES]:
            old.unlink(missing_ok=True)
    except (OSError, UserError):
        pass


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes for every tensor, symbolic dims (a dynamic batch) included; results for models up to 64 MiB are
    cached under ``cache_dir()/shapes`` by a hash of the model's bytes, the inference code and the onnx /
    onnxruntime versions (``GRAPHOPT_SHAPE_CACHE=0`` turns that off), so a recipe applied again skips the inference.

    Probing first (``shape_probe``): ONNX's C++ inference at two concrete sizes of the symbolic dims, with the
    shape arithmetic evaluated; milliseconds, used when it shapes every tensor. Otherwise onnxruntime's symbolic
    shape inference (it imports sympy: about a second): ONNX's own inference alone loses every shape after a
    dynamic-batch ``Expand``/``Reshape`` (the cls-token concat of a ViT), which it resolves. Where it stops (an op
    it does not know), ONNX's inference completes what it can from its partial result, and a model that defeats
    all of them is returned unchanged (its shapes stay unknown). Nothing is written to disk.
    """
    data = model.SerializeToString() if model.ByteSize() <= _SHAPE_CACHE_MAX_BYTES else None
    cached = None if data is None else _shape_cache_path(data)
    if cached is not None and cached.is_file():
        try:
            out = onnx.load_from_string(cached.read_bytes())
            os.utime(cached)  # recently used
            return out
        except Exception:  # noqa: BLE001 - a damaged entry is inferred again and replaced
            pass
    out = _infer_uncached(model)
    if cached is not None:
        _shape_cache_store(cached, out)
    return out


def _infer_uncached(model: onnx.ModelProto) -> onnx.ModelProto:
    return _keep_declared(model, _infer_any(model))


def _infer_any(model: onnx.ModelProto) -> onnx.ModelProto:
    from .shape_probe import probe_infer

    probed = probe_infer(model)
    if probed is not None:
        return probed
    inferred = _symbolic_infer(model)
    if inferred is not None and _drop_unsound(model, inferred[0]):
        inferred = (inferred[0], False)  # ONNX's inference may complete what was dropped
    complete = inferred is not None and inferred[1]
    if complete:
        return inferred[0]
    start = model if inferred is None else inferred[0]
    try:
        return onnx.shape_inference.infer_shapes(start, data_prop=True)
    except Exception:
        return start


def _declared_inputs(model: onnx.ModelProto, inferred: onnx.ModelProto) -> set[str]:
    """``inferred`` (in place) with one annotation per interface name (onnxruntime annotates a graph output in
    value_info too: the output's is the one checked) and ``model``'s graph inputs as declared; returns the names of
    the inputs inference had rewritten."""
    g = inferred.graph
    interface = {vi.name for vi in (*g.input, *g.output)}
    if any(vi.name in interface for vi in g.value_info):
        kept = [vi for vi in g.value_info if vi.name not in interface]
        del g.value_info[:]
        g.value_info.extend(kept)
    own = {vi.name: vi for vi in model.graph.input}
    rewritten = set()
    for vi in g.input:
        if vi.name in own and vi.type != own[vi.name].type:
            vi.type.CopyFrom(own[vi.name].type)
            rewritten.add(vi.name)
    return rewritten


def _keep_declared(model: onnx.ModelProto, inferred: onnx.ModelProto) -> onnx.ModelProto:
    """``inferred`` (in place) with ``model``'s graph inputs as declared, and its graph outputs' declared element
    types and dims: inference only fills in what an output leaves unknown (a dim with neither value nor name, a
    missing shape). A model's interface is never rewritten: onnxruntime checks feeds against the inputs'
    declared dims, and a symbol merged with a number there (``[N, 4]`` made ``[4, 4]``) rejects every other
    size."""
    _declared_inputs(model, inferred)
    own = {vi.name: vi for vi in model.graph.output}
    for vi in inferred.graph.output:
        mine = own.get(vi.name)
        if mine is None or vi.type == mine.type:
            continue
        if not (mine.type.HasField("tensor_type") and vi.type.HasField("tensor_type")):
            if mine.HasField("type"):
                vi.type.CopyFrom(mine.type)
            continue
        declared, got = mine.type.tensor_type, vi.type.tensor_type
        merged = onnx.TypeProto()
        merged.CopyFrom(mine.type)
        mt = merged.tensor_type
        if not mt.elem_type:
            mt.elem_type = got.elem_type
        if got.HasField("shape") and (not declared.HasField("shape") or len(declared.shape.dim) == len(got.shape.dim)):
            if not declared.HasField("shape"):
                mt.shape.CopyFrom(got.shape)
            else:
                for d, gd in zip(mt.shape.dim, got.shape.dim):
                    if not d.HasField("dim_value") and not d.dim_param:
                        d.CopyFrom(gd)
        vi.type.CopyFrom(merged)
    return inferred


def _symbolic_infer(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool] | None:
    """onnxruntime's symbolic inference as (model with value infos, complete?), None when it fails outright.

    Its ``infer_shapes`` entry point saves ``sym_shape_infer_temp.onnx`` into the working directory and raises
    when some shape stays unknown (a custom op), throwing away everything it did infer; these are the steps of
    that entry point without the save, keeping a partial result for ONNX's inference to complete."""
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 7:
        return None  # it supports opset 7 and later
    try:
        inference = symbolic_shape_inference()(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess rank, verbose
        inference._preprocess(model)
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_, bool(complete)
    except Exception:
        return None


def _drop_unsound(model: onnx.ModelProto, inferred: onnx.ModelProto) -> int:
    """Correct (in place) the shapes of ``inferred``, onnxruntime's symbolic inference of ``model``, where a sound
    source contradicts them; the number of annotations changed.

    Symbolic inference guesses where it cannot evaluate: a Split whose lengths are computed is split evenly
    (RotaryEmbedding's expanded function: an 8-wide head "split" into 4 + 4 when it is 8 + 0), a symbol is merged
    with another it meets (the batch of ``position_ids`` taken for the batch of ``input``). Passes take static
    dims as facts (fold_constants folds the shape arithmetic they decide), so one wrong dim becomes an invalid or
    wrong model. The main graph's annotations are followed in node order, each checked against

    - ONNX's per-node inference from the node's inputs as already checked (and the values of small constants):
      a static dim it gives wins; after an input that had to be corrected, only what it gives is kept (what
      symbolic inference derived from a wrong dim is wrong too);
    - probing's concrete runs (``shape_probe.probe_runs``: ONNX's inference and the shape arithmetic evaluated at
      two large sizes of the symbolic input dims and a small one, as far as they get): a static dim must have that
      value in every run, a dim named after input symbols (``N``, ``2*N``) the value it names in each. The runs
      only ever make a dim less specific: a contradicted dim becomes unknown (a missing or different rank becomes
      theirs, every dim unknown).
      They never give a dim a value or a name: concrete sizes can pass a clamp (``pos[:, :S]`` of a 64-wide
      buffer is 64 wide at both large sizes, which says nothing of S <= 64), so a dim named ``S`` that both large
      runs show equal (past the clamp) is kept unless the small run contradicts it;
    - ONNX's own inference of the whole ``model`` (data propagation on): a static dim there wins, a different rank
      drops the shape.

    Graph inputs keep their declared types (symbolic inference merges an input's symbol with a dim it meets and
    rewrites the input: ``[N, 4, 5]`` becomes ``[5, 4, 5]``); what it derived from a rewritten input is followed
    as corrected. Subgraph annotations get the last check. A contradicted element type drops the annotation. What
    the model itself declares (its outputs' and value infos' types) is left as declared."""
    from .shape_probe import probe_runs

    declared = {vi.name: vi.type.SerializeToString()
                for g in subgraphs(model.graph) for vi in (*g.input, *g.output, *g.value_info)}
    try:
        runs = probe_runs(model)
    except Exception:  # noqa: BLE001 - the checks are best effort; the others still apply
        runs = []
    (sizes_a, a), (sizes_b, b) = (runs * 2)[:2] if runs else (({}, {}), ({}, {}))
    sizes_c, c = runs[2] if len(runs) > 2 else ({}, {})
    try:
        whole = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
        onnx_types: dict[str, onnx.TypeProto | None] = {}
        for g in subgraphs(whole):
            for vi in (*g.value_info, *g.output):
                # A name typed differently in two scopes is checked against neither.
                onnx_types[vi.name] = vi.type if onnx_types.get(vi.name, vi.type) == vi.type else None
    except Exception:  # noqa: BLE001
        onnx_types = {}

    def named(param: str, sizes: dict[str, int]) -> int | None:
        """The value of a dim named ``param`` at ``sizes`` (symbolic inference writes sympy expressions: ``N``,
        ``2*N``, ``N + 1``), None when it names anything else (a symbol of its own)."""
        if param in sizes:
            return sizes[param]
        if not sizes or not any(name in param for name in sizes):
            return None
        try:
            import sympy

            expr = sympy.sympify(param, locals={name: sympy.Symbol(name) for name in sizes})
            if not {str(f) for f in expr.free_symbols} <= set(sizes):
                return None
            value = expr.subs({sympy.Symbol(k): v for k, v in sizes.items()})
            return int(value) if value.is_integer else None
        except Exception:  # noqa: BLE001
            return None

    def check(vi: onnx.ValueInfoProto, node_ref: onnx.TypeProto | None, tainted: bool) -> bool:
        """Correct ``vi`` in place; whether it changed."""
        t = vi.type
        if not t.HasField("tensor_type") or declared.get(vi.name) == t.SerializeToString():
            return False
        before = t.SerializeToString()
        tt = t.tensor_type
        concrete = (a[vi.name], b[vi.name]) if vi.name in a and vi.name in b else None
        whole_ref = onnx_types.get(vi.name)
        refs = [r.tensor_type for r in (node_ref, whole_ref) if r is not None and r.HasField("tensor_type")]
        if any(r.elem_type and tt.elem_type and r.elem_type != tt.elem_type for r in refs) or (
                concrete is not None and tt.elem_type and concrete[0][0] != tt.elem_type):
            vi.ClearField("type")  # nothing of it can be trusted: as declared (an output), or gone (a value info)
            if declared.get(vi.name):
                vi.type.ParseFromString(declared[vi.name])
            return True
        node_tt = refs[0] if node_ref is not None and refs and node_ref.HasField("tensor_type") else None
        if tainted:  # derived from a wrong annotation: only what ONNX's node inference gives
            if node_tt is not None and node_tt.HasField("shape"):
                tt.shape.CopyFrom(node_tt.shape)
            else:
                tt.ClearField("shape")
        for r in refs:
            if not r.HasField("shape"):
                continue
            if not tt.HasField("shape") or len(tt.shape.dim) != len(r.shape.dim):
                if r is node_tt:
                    tt.shape.CopyFrom(r.shape)
                elif tt.HasField("shape"):
                    tt.ClearField("shape")
                continue
            for d, rd in zip(tt.shape.dim, r.shape.dim):
                if rd.HasField("dim_value") and not (d.HasField("dim_value") and d.dim_value == rd.dim_value):
                    d.dim_value = rd.dim_value
        if concrete is not None and len(concrete[0][1]) == len(concrete[1][1]):
            dims_a, dims_b = concrete[0][1], concrete[1][1]
            dims_c = c[vi.name][1] if vi.name in c and len(c[vi.name][1]) == len(dims_a) else (None,) * len(dims_a)
            if not tt.HasField("shape") or len(tt.shape.dim) != len(dims_a):
                tt.ClearField("shape")  # the rank the runs show (no size makes it another), every dim unknown
                tt.shape.SetInParent()
                for _ in dims_a:
                    tt.shape.dim.add()
            for d, da, db, dc in zip(tt.shape.dim, dims_a, dims_b, dims_c):
                if d.HasField("dim_value"):
                    ok = da == db == d.dim_value and dc in (None, d.dim_value)
                elif d.dim_param:
                    va, vb = named(d.dim_param, sizes_a), named(d.dim_param, sizes_b)
                    vc = named(d.dim_param, sizes_c) if dc is not None else None
                    if va is None or vb is None:
                        ok = True  # a symbol of its own: says only that the dim has some size
                    elif dc is not None and vc is not None and dc != vc:
                        ok = False  # wrong at small sizes
                    else:  # right in both large runs, or both past a clamp (equal: nothing to learn from them)
                        ok = (va == da and vb == db) or da == db
                else:
                    ok = True  # unknown stays unknown: a number or a name from the runs could be a clamp's
                if not ok:
                    d.Clear()
        return t.SerializeToString() != before

    g = inferred.graph
    # The graph's inputs as the model declares them; what symbolic inference derived from one it rewrote is
    # followed as corrected.
    corrected: set[str] = _declared_inputs(model, inferred)
    annotated = {vi.name: vi for vi in (*g.value_info, *g.output)}
    types: dict[str, onnx.TypeProto] = {init.name: onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
                                        for init in g.initializer}
    types.update({vi.name: vi.type for vi in (*g.input, *g.value_info, *g.output)})
    data = {t.name: t for t in g.initializer if not t.external_data and t.ByteSize() < 1 << 16}
    opsets = {o.domain or "ai.onnx": o.version for o in inferred.opset_import}
    for node in g.node:
        if node.op_type == "Constant" and not node.domain and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.ByteSize() < 1 << 16:
                    value = onnx.TensorProto()
                    value.CopyFrom(attr.t)
                    value.name = node.output[0]
                    data[node.output[0]] = value
        got: dict[str, onnx.TypeProto] = {}
        if not any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            try:
                schema = onnx.defs.get_schema(node.op_type, opsets[node.domain or "ai.onnx"], node.domain)
                got = onnx.shape_inference.infer_node_outputs(
                    schema, node, {i: types[i] for i in node.input if i in types},
                    {i: data[i] for i in node.input if i in data})
            except Exception:  # noqa: BLE001 - no schema (a custom op), an input left untyped: nothing to add
                got = {}
        tainted = any(i in corrected for i in node_inputs(node))
        for name in node.output:
            vi = annotated.get(name)
            if vi is not None and check(vi, got.get(name), tainted):
                corrected.add(name)
    main = set(annotated)
    for sub in subgraphs(g):
        for vi in (*sub.value_info, *sub.output):
            if sub is not g or vi.name not in main or not any(vi.name in n.output for n in g.node):
                if check(vi, None, False):
                    corrected.add(vi.name)
    # A value info left with no type says nothing: remove it.
    for sub in subgraphs(g):
        kept = [vi for vi in sub.value_info if vi.HasField("type")]
        if len(kept) != len(sub.value_info):
            del sub.value_info[:]
            sub.value_info.extend(kept)
    return len(corrected)


