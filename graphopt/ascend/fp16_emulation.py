"""fp16 emulation of ATC's precision modes in onnxruntime, built once per model with a switch per unit.

The emulation model (what "runs in fp16" means here):

- A *unit* is what ATC compiles as one op: a single ONNX node, or a recognised pattern ATC fuses back into one op
  (the opset < 17 decomposition of LayerNorm, ReduceMean -> Sub -> Pow -> ReduceMean -> Add -> Sqrt -> Div
  [-> Mul -> Add], as ``LayerNorm``; any exported GELU, found by ``gelu_precision``'s matchers, as ``Gelu``).
  Data-movement ops (Reshape, Transpose, Concat, Slice, Gather, ...) are exact in any dtype and are no units.
- A unit in fp16 rounds every float input it takes from outside the unit (activations and weights) and every float
  output of each of its nodes to fp16: ``Cast(fp16) -> Cast(fp32)``. Values beyond 65504 become inf, values below
  6.1e-5 lose bits (subnormals), below 3e-8 flush to zero. Inside one node the arithmetic stays fp32: that is
  faithful for Conv/MatMul/Gemm (the cube unit multiplies fp16 and accumulates in fp32) and for elementwise ops
  (one rounding of the exact result), but optimistic for ops that accumulate in fp16 on the NPU.
- Reductions accumulate in fp16 when ``reduce_accumulation="fp16"``: ReduceMean and GlobalAveragePool as CANN's TBE
  ``reduce_mean_d`` does on Ascend310 in its high-performance mode (and wherever the fp32 sum is unsupported):
  multiply by an fp16 ``1/N`` first, then sum, here as a pairwise tree whose every partial sum is rounded to fp16;
  ReduceSum the same without the scaling (so its sum may overflow). With ``"fp32"`` (what the TBE kernels do on
  Ascend310P/910) only their output is rounded. Softmax and LayerNormalization nodes are rounded at their inputs
  and outputs only (their internal sums stay fp32).
- GELU ``high_performance`` is the tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``,
  computed (and rounded, when its unit runs in fp16) node by node; ``high_precision`` is the exported exact GELU.

Inputs: every input of the model is fed (``run`` takes feeds, dicts input name -> array); only float32 tensors
are rounded, so integer and bool inputs (token ids, masks) and what is computed from them pass through unchanged.
Shapes inferred to find units are dropped from the emulated graph (onnxruntime infers its own at each run).

Switches: the emulated graph has two extra inputs, ``graphopt_fp16_units`` (bool, one per unit) and
``graphopt_gelu_high_performance`` (bool scalar). Every node of a unit becomes an ``If(switch)`` whose
then-branch is a copy of the node reading its float inputs rounded to fp16 (constants rounded once, when the graph
is built; weights of ``OUTER_WEIGHT_ELEMENTS`` or more are read from the outer scope, where the model holds them
once, through Cast nodes onnxruntime folds when it builds the session) and rounding its outputs, and whose
else-branch is the node itself, so one onnxruntime session serves every precision assignment (a trial is one
``session.run`` with another switch vector, never a new conversion), a unit switched off costs what the node
costs, and weights stay constants of their node in either branch (onnxruntime
prepacks them). All switches off computes the fp32 model (to float rounding noise: onnxruntime may pick other
kernels inside the branches).

ATC's modes, as emulated (``Fp16Emulator.assignment``):

- ``force_fp16``: every unit in fp16; ``must_keep_origin_dtype``: none;
- ``allow_fp32_to_fp16``: cube ops (Conv, ConvTranspose, MatMul, Gemm) in fp16, vector ops keep fp32;
- ``allow_mix_precision``: the white list (modelled as the cube ops, plus ``white-list.to-add``) runs fp16, the
  black list (``black-list.to-add``) fp32, the gray rest follows its inputs: fp16 when any float input it reads
  comes from an fp16 unit (through data-movement ops). ATC's built-in black and gray lists vary by CANN version
  and are not modelled beyond this.
- ``keep_dtype`` entries (node names or ``OpType::Type``) and explicit keeps stay fp32 in every mode.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..core.errors import UserError
from ..core.model_inputs import model_inputs
from ..core.ir import const_value, make_name, producer, to_graph, to_model
from ..core.shapes import infer_shapes
from ..core.pattern import NoMatch
from ..core.sessions import create_session
from .op_types import ascend_op_type
from .fp16_units import (CUBE_OPS, DATA_MOVEMENT_OPS, GELU_INPUT, PRECISION_MODES, REDUCE_OPS, UNITS_INPUT,
                         Fp16Editor, Unit, big_weights, cube_flops, int_dims, is_float, match_decomposed_layernorm,
                         numel, reduce_axes, unit_ascend_type, unit_origins, weightless)

if TYPE_CHECKING:
    from ..core.runner import Outputs

__all__ = ["Fp16Emulator"]


class Fp16Emulator:
    """One emulated graph per model; ``run`` evaluates any per-unit fp16 assignment with the same session.

    ``units`` lists the units in topological order. ``assignment(mode, ...)`` turns an ATC precision mode (and
    mixlist / keep_dtype) into the boolean vector ``run`` takes (True: the unit runs in fp16).
    """

    def __init__(self, model: onnx.ModelProto, input_name: str | None = None, *,
                 reduce_accumulation: str = "fp16"):
        if reduce_accumulation not in ("fp16", "fp32"):
            raise UserError(f"reduce_accumulation must be fp16 or fp32, got {reduce_accumulation!r}")
        self.reduce_accumulation = reduce_accumulation
        self.stats: dict[str, int] = {"unknown_dtype": 0, "reductions_fp16_accumulated": 0,
                                      "reductions_rounded_only": 0, "gelu_units": 0, "layernorm_units": 0}
        self.model_inputs = model_inputs(model)
        self._checked = False
        weights = big_weights(model)
        self._weights = set(weights)
        graph = to_graph(infer_shapes(weightless(model, weights)))
        graph.toposort()
        graph.inputs = [t for t in graph.inputs if t.name not in weights]
        real_inputs = [t for t in graph.inputs]
        if not real_inputs:
            raise UserError("model has no inputs")
        self.input_name = input_name or real_inputs[0].name
        if self.input_name not in {t.name for t in real_inputs}:
            raise UserError(f"model has no input {self.input_name!r} (inputs: "
                            f"{', '.join(t.name for t in real_inputs)})")
        self.output_names = [t.name for t in graph.outputs]
        self.node_names = {n.name for n in graph.nodes if n.name}
        self._flow: list[tuple[int | None, list[str], list[str]]] = []
        self.units: list[Unit] = []
        member = self._find_units(graph)
        self._build(graph, unit_origins(graph, member))
        self.model = to_model(graph)
        self.model.graph.initializer.extend(weights.values())  # read by the units' branches from the outer scope
        try:
            # "deploy": every optimisation (prepacked and re-laid-out Conv weights inside the branches make a run
            # 1.3-1.7x faster than "compare"); the fp32 reference is this session with every switch off, so what
            # the optimisations change (float rounding noise) is in the reference too. Workers that sleep between
            # tasks: a run is hundreds of small If subgraphs, and spinning workers fight for the cores of a shared
            # machine (2 loaded cores: runs 2-2.7x faster side by side without spinning).
            self.session = create_session(self.model, "deploy", spinning=False)
        except Exception as e:
            # onnxruntime's optimisers can fail on a graph it runs as written: constant folding re-infers an
            # outer-scope value a unit's If reads (the expanded RMSNormalization's Range axes) with another shape
            # than its first inference gave ("Can't merge shape info"). The graph unoptimised computes the same.
            try:
                self.session = create_session(self.model, "evaluate", spinning=False)
            except Exception:  # noqa: BLE001 - the first failure is the one to report
                raise UserError(f"onnxruntime cannot load the fp16-emulation graph: {str(e).splitlines()[0]}") \
                    from None
            self.stats["unoptimized_session"] = 1
        self.runs = 0
        self.run_seconds = 0.0  # in session.run, over every feed of every run
        self.items_run = 0  # items over every run (a trial on 25 items counts 25)

    # -- units ------------------------------------------------------------------------------------------------
    def _find_units(self, graph: gs.Graph) -> dict[int, int]:
        """Group nodes into units (patterns first) and record the data flow; returns id(node) -> unit index."""
        from ..passes.gelu_precision import find_gelus

        outs = {id(t) for t in graph.outputs}
        # (kind, nodes, x, y, whether high_performance differs from it)
        patterns: list[tuple[str, list[gs.Node], gs.Tensor | None, gs.Tensor | None, bool]] = []
        gelus, gelu_nodes, _ = find_gelus(graph)
        for m in gelus:
            patterns.append(("Gelu", list(m.nodes), m.x, m.y, m.form == "erf"))
        for n in gelu_nodes:
            patterns.append(("Gelu", [n], n.inputs[0], n.outputs[0], n.attrs.get("approximate", "none") == "none"))
        claimed = {id(n) for p in patterns for n in p[1]}
        for n in graph.nodes:
            if n.op == "ReduceMean" and id(n) not in claimed:
                ln = match_decomposed_layernorm(n, outs)
                if not isinstance(ln, NoMatch) and not any(id(x) in claimed for x in ln.nodes):
                    patterns.append(("LayerNorm", ln.nodes, ln.x, ln.y, False))
                    claimed.update(id(x) for x in ln.nodes)
        self.stats["gelu_units"] = sum(1 for p in patterns if p[0] == "Gelu")
        self.stats["layernorm_units"] = sum(1 for p in patterns if p[0] == "LayerNorm")
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        pattern_of = {id(n): k for k, p in enumerate(patterns) for n in p[1]}
        made: dict[int, int] = {}  # pattern index -> unit index
        member: dict[int, int] = {}
        self._unit_nodes: list[list[gs.Node]] = []
        self._gelu_io: dict[int, tuple[gs.Tensor, gs.Tensor]] = {}
        for n in graph.nodes:  # topological order: units are numbered by their first node
            k = pattern_of.get(id(n))
            if k is not None:
                if k not in made:
                    kind, nodes, x, y, exact = patterns[k]
                    made[k] = self._add_unit(kind, sorted(nodes, key=lambda v: order[id(v)]), True, exact)
                    if kind == "Gelu":
                        self._gelu_io[made[k]] = (x, y)
                member[id(n)] = made[k]
                continue
            if any(not isinstance(t, gs.Constant) and t.dtype is None for t in n.outputs):
                self.stats["unknown_dtype"] += 1
            if n.op in DATA_MOVEMENT_OPS or not any(is_float(t) for t in n.outputs) \
                    or n.domain not in (None, "", "ai.onnx") or any(isinstance(v, gs.Graph) for v in n.attrs.values()):
                continue
            member[id(n)] = self._add_unit(n.op, [n], False, False)
        # The data flow in topological order (a unit where its first node is), for allow_mix_precision's gray ops.
        seen: set[int] = set()
        for n in graph.nodes:
            u = member.get(id(n))
            if u is None:
                self._flow.append((None, [t.name for t in n.inputs], [t.name for t in n.outputs]))
            elif u not in seen:
                seen.add(u)
                self._flow.append((u, self.units[u].inputs, self.units[u].outputs))
        return member

    def _add_unit(self, kind: str, nodes: list[gs.Node], fused: bool, gelu_exact: bool) -> int:
        ids = {id(n) for n in nodes}
        inputs: list[str] = []
        outputs: list[str] = []
        for n in nodes:
            for t in n.inputs:
                p = producer(t) if isinstance(t, gs.Variable) else None
                if isinstance(t, gs.Variable) and is_float(t) and (p is None or id(p) not in ids) \
                        and const_value(t) is None and t.name not in inputs and t.name not in self._weights:
                    inputs.append(t.name)
            for t in n.outputs:
                if any(id(c) not in ids for c in t.outputs) or not t.outputs:
                    outputs.append(t.name)
        ascend = "LayerNorm" if kind == "LayerNorm" else unit_ascend_type(kind, nodes[0])
        unit = Unit(len(self.units), kind, ascend, [n.name for n in nodes], fused,
                    sum(cube_flops(n) for n in nodes if n.op in CUBE_OPS),
                    numel(nodes[-1].outputs[0].shape) if nodes[-1].outputs else 0, inputs, outputs, gelu_exact)
        self.units.append(unit)
        self._unit_nodes.append(list(nodes))
        return unit.index

    # -- the emulated graph -----------------------------------------------------------------------------------
    def _build(self, graph: gs.Graph, origin: dict[int, int]) -> None:
        ed = Fp16Editor(graph)
        mask = gs.Variable(UNITS_INPUT, dtype=np.bool_, shape=[len(self.units)])
        hp = gs.Variable(GELU_INPUT, dtype=np.bool_, shape=[])
        graph.inputs.extend([mask, hp])

        # GELU high_performance: the tanh form beside the exact one, selected by the global switch.
        for u, (x, y) in self._gelu_io.items():
            if self.units[u].gelu_exact:
                self._unit_nodes[u].extend(ed.gelu_tanh(x, y, hp, f"unit{u}"))
        moved: set[int] = set()  # unit nodes, each now the else-branch of its If
        switches: list[gs.Tensor] = []
        fp32: dict[int, gs.Tensor] = {}  # unit -> "it runs in fp32": its outputs need rounding where read in fp16
        for unit, nodes in zip(self.units, self._unit_nodes):
            idx = ed.const(f"unit{unit.index}_index", np.array(unit.index, np.int64))
            g = ed.node("Gather", [mask, idx], f"unit{unit.index}_fp16", {"axis": 0}, dtype=np.bool_)
            switches.append(g)
            internal = {id(t) for n in nodes for t in n.outputs}  # rounded already, by the node producing it
            for p in {origin[id(t)] for n in nodes for t in n.inputs if id(t) in origin} - {unit.index}:
                if p not in fp32:
                    fp32[p] = ed.node("Not", [switches[p]], f"unit{p}_fp32", dtype=np.bool_)
            for node in nodes:
                self._switch_node(ed, g, node, internal, f"unit{unit.index}", {
                    id(t): fp32[origin[id(t)]] for t in node.inputs if origin.get(id(t), unit.index) != unit.index})
                moved.add(id(node))
        graph.nodes = [n for n in graph.nodes if id(n) not in moved]
        # Inferred shapes served to find units and count FLOPs; the emulated graph runs without them (onnxruntime
        # infers its own), so an inferred static dim that is wrong for another size (a position-id Slice sized
        # [1, 64] by symbolic inference where the run has 8) cannot make the If branches refuse the run.
        ends = {id(t) for t in (*graph.inputs, *graph.outputs)}
        for t in graph.tensors().values():
            if isinstance(t, gs.Variable) and id(t) not in ends:
                t.shape = None
        graph.toposort()

    def _switch_node(self, ed: Fp16Editor, g: gs.Tensor, node: gs.Node, internal: set[int], base: str,
                     unrounded: dict[int, gs.Tensor]) -> None:
        """Replace ``node`` by ``If(g)``: the then-branch a copy of it reading its float inputs rounded to fp16 (a
        constant rounded once, here) and rounding its float outputs, the else-branch the node itself. Constant
        weights stay constants of the node in either branch, so onnxruntime prepacks them as in the model.
        ``unrounded``: id(input) -> a switch telling whether the one unit it comes from runs in fp32 (an input from
        an fp16 unit holds fp16 values already: rounding it again would only cost time)."""

        def rounded(t: gs.Tensor) -> gs.Tensor:
            if id(t) not in unrounded:
                return ed.round(t)
            return ed.select(unrounded[id(t)], lambda: ed.round(t), lambda: t, f"{base}_in")
        original = list(node.inputs)
        outputs = list(node.outputs)

        def floating(t: gs.Tensor | None) -> bool:
            if t is None or not t.name or id(t) in internal:
                return False
            value = const_value(t)
            return value.dtype == np.float32 if value is not None else is_float(t)

        def fresh(y: gs.Tensor, suffix: str) -> gs.Variable:
            return ed.var(f"{y.name}_{suffix}", y.dtype if y.dtype is not None else np.float32)

        def on() -> list[gs.Tensor]:
            ins = [rounded(t) if floating(t) else t for t in original]
            raws = [fresh(y, "fp16_raw") for y in outputs]
            copy = gs.Node(node.op, make_name(ed.g, f"{node.name or base}_fp16"), dict(node.attrs), ins, raws,
                           domain=node.domain)
            ed.sink.append(copy)
            return [self._fp16_output(ed, copy, original, raw, base) if is_float(y) else raw
                    for y, raw in zip(outputs, raws)]

        def off() -> list[gs.Tensor]:
            raws = [fresh(y, "fp32") for y in outputs]
            node.outputs.clear()
            node.outputs.extend(raws)
            ed.sink.append(node)
            return raws

        ed.select(g, on, off, base, out=outputs)

    def _fp16_output(self, ed: Fp16Editor, node: gs.Node, original: list, raw: gs.Tensor, base: str) -> gs.Tensor:
        """The node's output as fp16 computes it (its inputs, read through their switches, are fp16 values)."""
        if node.op in REDUCE_OPS:
            shape = int_dims(original[0].shape)
            axes = reduce_axes(node, len(shape)) if shape is not None else None
            known = shape is not None and axes is not None and all(shape[a] > 0 for a in axes)
            if self.reduce_accumulation == "fp16" and known and axes:
                self.stats["reductions_fp16_accumulated"] += 1
                return ed.tree_reduce(node.inputs[0], shape, axes, node.op != "ReduceSum", raw, base)
            self.stats["reductions_rounded_only"] += 1
        return ed.round(raw)

    # -- assignments ------------------------------------------------------------------------------------------
    def _matches(self, unit: Unit, name: str) -> bool:
        return name in (unit.kind, unit.ascend_type) or ascend_op_type(name) == unit.ascend_type

    def units_of(self, names: Iterable[str]) -> set[int]:
        """Units whose op type (ONNX or Ascend name) is one of ``names``."""
        names = list(names)
        return {u.index for u in self.units if any(self._matches(u, n) for n in names)}

    def keep_dtype_units(self, entries: Iterable[str]) -> set[int]:
        """Units a ``keep_dtype.cfg`` keeps: ``OpType::Type`` entries by op type, others by node name."""
        out: set[int] = set()
        by_node = {name: u.index for u in self.units for name in u.nodes}
        for e in entries:
            if "::" in e:
                out |= self.units_of([e.split("::", 1)[1]])
            elif e in by_node:
                out.add(by_node[e])
            else:
                raise UserError(f"keep_dtype: no node named {e!r} in the model")
        return out

    def assignment(self, mode: str = "force_fp16", *, mixlist: Mapping | None = None,
                   keep_dtype: Sequence[str] = (), keep: Iterable[int] = ()) -> np.ndarray:
        """Which units run in fp16 under an ATC precision mode (see the module docstring)."""
        if mode not in PRECISION_MODES:
            raise UserError(f"precision mode {mode!r}: emulated modes are {', '.join(PRECISION_MODES)}")
        kept = set(keep) | self.keep_dtype_units(keep_dtype)
        n = len(self.units)
        if mode == "force_fp16":
            fp16 = np.ones(n, bool)
        elif mode == "must_keep_origin_dtype":
            fp16 = np.zeros(n, bool)
        elif mode == "allow_fp32_to_fp16":
            fp16 = np.array([u.kind in CUBE_OPS for u in self.units], bool)
        else:
            mix = mixlist or {}
            black_add = self.units_of(mix.get("black-list", {}).get("to-add", []))
            white_add = self.units_of(mix.get("white-list", {}).get("to-add", []))
            white_remove = self.units_of(mix.get("white-list", {}).get("to-remove", []))
            white = ({u.index for u in self.units if u.kind in CUBE_OPS} - white_remove) | white_add
            fp16 = np.zeros(n, bool)
            is16: dict[str, bool] = {}
            for u, ins, outs in self._flow:
                if u is None:
                    v = any(is16.get(t, False) for t in ins)
                elif u in black_add or u in kept:
                    v = False
                elif u in white:
                    v = True
                else:  # gray: follows what it reads
                    v = any(is16.get(t, False) for t in ins)
                if u is not None:
                    fp16[u] = v
                for t in outs:
                    is16[t] = v
        for u in kept:
            fp16[u] = False
        return fp16

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, batches: Sequence[Mapping[str, np.ndarray] | np.ndarray],
            fp16: np.ndarray | Sequence[bool] | None = None,
            gelu_high_performance: bool = False, count: bool = True) -> "Outputs":
        """Outputs over every feed with units ``fp16`` (default none) in fp16: ``graphopt.core.verify.Outputs``, each
        output concatenated over the feeds and kept per feed, so ``compare_outputs`` compares feed by feed.
        ``batches`` are feeds (dicts input name -> array, every input of the model; integer and bool inputs pass
        through unchanged, only float32 tensors are rounded) or bare arrays for ``input_name``. ``count``: a trial
        of the search (``runs``), not a check that the feeds run."""
        from ..core.runner import Outputs

        mask = np.zeros(len(self.units), bool) if fp16 is None else np.asarray(fp16, bool)
        if mask.shape != (len(self.units),):
            raise ValueError(f"fp16 assignment has {mask.size} entries, the model has {len(self.units)} units")
        outs: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        feed_extra = {UNITS_INPUT: mask, GELU_INPUT: np.array(bool(gelu_high_performance))}
        for x in batches:
            feed = dict(x) if isinstance(x, Mapping) else {self.input_name: x}
            if not self._checked:
                from ..core.model_inputs import check_feed

                check_feed(self.model_inputs, feed, "fp16 emulation")
                self._checked = True
            try:
                t0 = time.perf_counter()
                res = self.session.run(self.output_names, {**feed, **feed_extra})
                self.run_seconds += time.perf_counter() - t0
                self.items_run += next((len(v) for v in feed.values() if np.ndim(v)), 1)
            except Exception as e:
                shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feed.items())
                raise UserError(f"onnxruntime failed on the fp16-emulation graph with inputs {shapes}: "
                                f"{str(e).splitlines()[0]}") from None
            for n, o in zip(self.output_names, res):
                outs[n].append(np.asarray(o))
        self.runs += count
        return Outputs.of_feeds(outs)

    def fp16_flop_share(self, fp16: np.ndarray) -> float | None:
        """Share of the Conv/MatMul/Gemm FLOPs that run in fp16 under ``fp16``."""
        total = sum(u.cube_flops for u in self.units)
        if not total:
            return None
        return sum(u.cube_flops for u, f in zip(self.units, fp16) if f) / total
