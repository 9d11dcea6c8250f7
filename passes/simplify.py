"""``simplify``: onnxsim (constant folding, dead-code removal, shape simplification)."""
from __future__ import annotations

from dataclasses import field

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.errors import PassError, UserError
from graphopt.core.input_defaults import input_defaults, keep, strip
from graphopt.core.ir import constants_to_initializers, op_counts, replace_graph
from graphopt.core.model import structure_hash
from graphopt.core.ir import to_graph, to_model
from graphopt.core.onnx_files import constant_nbytes
from graphopt.core.pass_infra import Pass, PassResult, register_pass

__all__ = ["Simplify", "PROTOBUF_LIMIT"]

PROTOBUF_LIMIT = 2 ** 31  # bytes in one serialized protobuf message, which onnxsim needs the model to be


@register_pass("simplify")
class Simplify(Pass):
    """Simplify the graph with onnxsim: fold constants and shape arithmetic, drop dead nodes.

    ``fixed_input_shape`` pins the inputs' shapes first (``{name: [dims]}``), which lets onnxsim fold shape
    computations a dynamic batch would keep; ``skip`` makes the pass a recorded no-op for models where onnxsim is
    too slow; ``skip_optimizers`` names onnxoptimizer passes onnxsim must not run.
    """

    fixed_input_shape: dict[str, list[int]] | None = field(
        default=None, metadata={"help": "pin input shapes, e.g. {image: [1, 3, 224, 224]}"})
    skip: bool = field(default=False, metadata={"help": "record the pass but do not run onnxsim"})
    skip_optimizers: list[str] = field(default_factory=list, metadata={"help": "onnxoptimizer passes to skip"})
    skip_fuse_bn: bool = field(default=False, metadata={"help": "keep BatchNormalization unfused"})

    def __post_init__(self) -> None:
        for name, dims in (self.fixed_input_shape or {}).items():
            if not dims or any(d <= 0 for d in dims):
                raise ValueError(f"fixed_input_shape.{name}: expected positive dimensions, got {dims}")

    def run(self, graph: gs.Graph) -> PassResult:
        if self.skip:
            return PassResult(False, {"skipped": "skip: true"})
        if constant_nbytes(graph) >= PROTOBUF_LIMIT:
            return PassResult(False, {"skipped": "model over 2 GiB: onnxsim works on one protobuf message, which "
                                                 "cannot exceed 2 GiB"})
        import onnxsim

        if self.fixed_input_shape:
            inputs = {t.name: t for t in graph.inputs}
            for name, dims in self.fixed_input_shape.items():
                if name not in inputs:
                    raise UserError(f"simplify: fixed_input_shape names {name!r}, not an input of the model "
                                    f"(inputs: {', '.join(sorted(inputs))})")
                # A pinned shape the input cannot have makes a model onnxruntime rejects: say so here.
                have = inputs[name].shape
                if have is not None and (len(have) != len(dims) or any(
                        isinstance(h, (int, np.integer)) and h >= 0 and h != d for h, d in zip(have, dims))):
                    raise UserError(f"simplify: fixed_input_shape.{name} {list(dims)} does not fit the model's "
                                    f"input {name!r} shaped {list(have)}")
        model = to_model(graph)
        defaults = dict(input_defaults(graph))
        strip(graph, model)  # onnxsim folds every initializer: an input a caller may feed must stay an input
        before = op_counts(model)
        nodes_before = len(model.graph.node)
        try:
            simplified, ok = onnxsim.simplify(model, check_n=0, skip_fuse_bn=self.skip_fuse_bn,
                                              overwrite_input_shapes=self.fixed_input_shape or None,
                                              skipped_optimizers=self.skip_optimizers or None)
        except Exception as e:  # noqa: BLE001 - onnxsim's C++ raises RuntimeError (and others) on models it cannot take
            # A model onnxsim cannot simplify is not a graphopt bug: one line naming the pass and quoting onnxsim,
            # and the run stops (or, with on_fail: skip, goes on without it). Not a silent no-op: a recipe that
            # lists simplify usually relies on its folding for the passes after it.
            text = str(e).strip()
            raise PassError(f"pass simplify: onnxsim cannot simplify this model: {type(e).__name__}: "
                            f"{text.splitlines()[0][:300] if text else '(no message)'}") from None
        if not ok:
            raise PassError("pass simplify: onnxsim reported the simplified model as invalid")
        new = to_graph(simplified)
        constants_to_initializers(new)  # onnxsim leaves folded values as Constant nodes
        new.cleanup()
        keep(new, defaults)
        simplified = to_model(new)
        changed = structure_hash(new) != structure_hash(graph)
        if changed:
            replace_graph(graph, new)
        after = op_counts(simplified)
        removed = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0)}
        return PassResult(changed, {"nodes_before": nodes_before, "nodes_after": len(simplified.graph.node),
                                    "removed": removed})
