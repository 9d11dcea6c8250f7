"""``softmax_transpose``: move a last-axis Softmax of a rank-4 tensor to axis 1 between two Transposes."""
from __future__ import annotations

from collections import Counter
from dataclasses import field

import onnx_graphsurgeon as gs

from graphopt.core.ir import ensure_shapes, make_name, opset_of, producer, replace_uses, set_tensors
from graphopt.core.pass_infra import PassResult, register_pass
from graphopt.core.rules import Match, NodeBuilder, RewritePass

__all__ = ["SoftmaxTranspose", "swap_perm", "compose_perms", "fuse_transpose_pair"]


def swap_perm(rank: int, a: int, b: int) -> list[int]:
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return perm


def compose_perms(first: list[int], second: list[int]) -> list[int]:
    """The single perm equal to Transpose(first) followed by Transpose(second)."""
    return [first[i] for i in second]


def fuse_transpose_pair(graph: gs.Graph, outer: gs.Node) -> str | None:
    """If ``outer`` (a Transpose) reads the output of another Transpose that nothing else reads, compose the two
    into one, or bypass both when the composition is the identity. Returns "merged", "cancelled" or None."""
    if not outer.inputs or not outer.outputs:  # already bypassed by an earlier fusion
        return None
    inner = producer(outer.inputs[0])
    if inner is None or inner.op != "Transpose" or len(inner.outputs[0].outputs) != 1:
        return None
    if inner.outputs[0] in graph.outputs:
        return None
    given = inner.attrs.get("perm", outer.attrs.get("perm"))
    if given is None:
        return None
    rank = len(given)
    # A Transpose without ``perm`` reverses the axes (ONNX's default).
    first, second = (list(n.attrs.get("perm", reversed(range(rank)))) for n in (inner, outer))
    perm = compose_perms(first, second)
    src = inner.inputs[0]
    if perm == list(range(len(perm))):
        out = outer.outputs[0]
        if out in graph.outputs:  # the graph output keeps its name, now through an Identity
            outer.op, outer.attrs = "Identity", {}
            set_tensors(outer.inputs, [src])
        else:
            replace_uses(out, src)
            outer.outputs.clear()
        return "cancelled"
    outer.attrs["perm"] = perm
    set_tensors(outer.inputs, [src])  # the inner Transpose is now dead; cleanup removes it
    return "merged"


@register_pass("softmax_transpose")
class SoftmaxTranspose(RewritePass):
    """Softmax(x, axis=last) on a rank-r tensor  ->  Transpose(perm swapping 1 and r-1) -> Softmax(axis=1) ->
    Transpose(same perm).

    The maths is unchanged: softmax normalises along one data axis, and the swap moves that axis to position 1
    and back (the perm is its own inverse). On the Ascend NPU a softmax over axis 1 of the attention scores runs
    faster (LV-ViT seed: 176 -> 231 fps). Where an inserted Transpose meets another Transpose that nothing else
    reads, the two are composed into one, or both removed when they cancel. Needs opset >= 13: before it,
    Softmax(axis=1) flattened axes 1.. into one.
    """

    rank: int = field(default=4, metadata={"help": "rank of the softmax input to rewrite"})
    axis: int = field(default=-1, metadata={"help": "softmax axis to rewrite (negative counts from the end)"})
    shape: list[int | None] | None = field(
        default=None, metadata={"help": "only inputs of this shape (null matches any dim, e.g. [null, 6, 197, 197])"})
    fuse_transposes: bool = field(default=True, metadata={"help": "compose adjacent Transposes afterwards"})

    def __post_init__(self) -> None:
        if self.rank < 3:
            raise ValueError(f"rank must be at least 3, got {self.rank}")
        if not -self.rank <= self.axis < self.rank:
            raise ValueError(f"axis {self.axis} is out of range for rank {self.rank}")
        if self.axis % self.rank == 1:
            raise ValueError("axis 1 is already the target axis")
        if self.shape is not None and len(self.shape) != self.rank:
            raise ValueError(f"shape {self.shape} does not have rank {self.rank}")

    def prepare(self, graph: gs.Graph) -> None:
        ensure_shapes(graph, [n.inputs[0] for n in graph.nodes if n.op == "Softmax"])

    def pattern(self, op, x):
        return op.Softmax(x, axis=op.attr("axis"))

    def check(self, ctx: Match, x: gs.Tensor, axis: int) -> str | None:
        if x.shape is None:
            return "input rank unknown (run infer_shapes first)"
        rank = len(x.shape)
        if rank != self.rank:
            return f"rank {rank}, not {self.rank}"
        if axis % rank != self.axis % self.rank:
            return f"axis {axis % rank}, not {self.axis % self.rank}"
        if self.shape is not None and any(want is not None and want != got for want, got in zip(self.shape, x.shape)):
            return f"shape {list(x.shape)} does not match {self.shape}"
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, axis: int) -> None:
        # The Softmax node itself stays (name and place), between two new Transposes: edited here, not replaced.
        graph, node, y = ctx.graph, ctx.root, ctx.root.outputs[0]
        rank = len(x.shape)
        perm = swap_perm(rank, 1, axis % rank)
        moved_shape = [x.shape[p] for p in perm]
        xt = gs.Variable(make_name(graph, f"{x.name}_softmax_in_t"), dtype=x.dtype, shape=moved_shape)
        yt = gs.Variable(make_name(graph, f"{y.name}_softmax_out_t"), dtype=y.dtype, shape=moved_shape)
        t_in = gs.Node("Transpose", make_name(graph, f"{node.name}_transpose_in"), {"perm": perm}, [x], [xt])
        set_tensors(node.inputs, [xt])
        set_tensors(node.outputs, [yt])
        node.attrs["axis"] = 1
        t_out = gs.Node("Transpose", make_name(graph, f"{node.name}_transpose_out"), {"perm": perm}, [yt], [y])
        graph.nodes.extend([t_in, t_out])
        self._inserted += [t_in, t_out]

    def run(self, graph: gs.Graph) -> PassResult:
        opset = opset_of(graph)
        if opset < 13:
            softmaxes = sum(n.op == "Softmax" for n in graph.nodes)
            return PassResult(False, {"rewritten": 0, "skipped": {f"opset {opset} < 13": softmaxes}})
        self._inserted: list[gs.Node] = []
        result = super().run(graph)
        inserted, rewritten = self._inserted, result.stats["rewritten"]
        fused = Counter()
        if self.fuse_transposes and rewritten:
            graph.cleanup()
            candidates = inserted + [c for t in inserted[1::2] for c in t.outputs[0].outputs if c.op == "Transpose"]
            for t in candidates:
                if t.op == "Transpose" and t.inputs:
                    how = fuse_transpose_pair(graph, t)
                    if how:
                        fused[how] += 1
        if fused:
            result.stats["transposes_fused"] = dict(fused)
        # A softmax output keeps its name and its values, now produced by the Transpose back: tell the name map.
        live = graph.tensors()
        result.renamed = {t.outputs[0].name: t.outputs[0].name for t in inserted[1::2]
                          if t.outputs and t.outputs[0].name in live}
        return result
