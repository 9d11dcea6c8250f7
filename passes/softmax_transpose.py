"""``softmax_transpose``: move a last-axis Softmax of a rank-4 tensor to axis 1 between two Transposes."""
from __future__ import annotations

from collections import Counter
from dataclasses import field

import onnx_graphsurgeon as gs

from graphopt.core.ir import ensure_shapes, make_name, opset_of, producer, replace_uses, set_tensors
from graphopt.core.pass_infra import Pass, PassResult, register_pass
from graphopt.core.pattern import NoMatch

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
class SoftmaxTranspose(Pass):
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

    def _match(self, node: gs.Node, opset: int) -> NoMatch | None:
        x = node.inputs[0]
        if x.shape is None:
            return NoMatch("input rank unknown (run infer_shapes first)")
        rank = len(x.shape)
        if rank != self.rank:
            return NoMatch(f"rank {rank}, not {self.rank}")
        default_axis = -1 if opset >= 13 else 1
        axis = int(node.attrs.get("axis", default_axis)) % rank
        if axis != self.axis % self.rank:
            return NoMatch(f"axis {axis}, not {self.axis % self.rank}")
        if self.shape is not None:
            for want, got in zip(self.shape, x.shape):
                if want is not None and want != got:
                    return NoMatch(f"shape {list(x.shape)} does not match {self.shape}")
        return None

    def run(self, graph: gs.Graph) -> PassResult:
        opset = opset_of(graph)
        softmaxes = [n for n in graph.nodes if n.op == "Softmax"]
        if opset < 13:
            return PassResult(False, {"rewritten": 0, "skipped": {f"opset {opset} < 13": len(softmaxes)}})
        ensure_shapes(graph, [n.inputs[0] for n in softmaxes])
        skipped: Counter[str] = Counter()
        rewritten = 0
        inserted: list[gs.Node] = []
        for node in softmaxes:
            reason = self._match(node, opset)
            if reason is not None:
                skipped[reason.reason] += 1
                continue
            x, y = node.inputs[0], node.outputs[0]
            rank = len(x.shape)
            axis = int(node.attrs.get("axis", -1)) % rank
            perm = swap_perm(rank, 1, axis)
            moved_shape = [x.shape[p] for p in perm]
            xt = gs.Variable(make_name(graph, f"{x.name}_softmax_in_t"), dtype=x.dtype, shape=moved_shape)
            yt = gs.Variable(make_name(graph, f"{y.name}_softmax_out_t"), dtype=y.dtype, shape=moved_shape)
            t_in = gs.Node("Transpose", make_name(graph, f"{node.name}_transpose_in"), {"perm": perm}, [x], [xt])
            set_tensors(node.inputs, [xt])
            set_tensors(node.outputs, [yt])
            node.attrs["axis"] = 1
            t_out = gs.Node("Transpose", make_name(graph, f"{node.name}_transpose_out"), {"perm": perm}, [yt], [y])
            graph.nodes.extend([t_in, t_out])
            inserted += [t_in, t_out]
            rewritten += 1
        fused = Counter()
        if self.fuse_transposes and rewritten:
            graph.cleanup()
            candidates = inserted + [c for t in inserted[1::2] for c in t.outputs[0].outputs if c.op == "Transpose"]
            for t in candidates:
                if t.op == "Transpose" and t.inputs:
                    how = fuse_transpose_pair(graph, t)
                    if how:
                        fused[how] += 1
        stats = {"rewritten": rewritten, "skipped": dict(skipped)}
        if fused:
            stats["transposes_fused"] = dict(fused)
        # A softmax output keeps its name and its values, now produced by the Transpose back: tell the name map.
        live = graph.tensors()
        renamed = {t.outputs[0].name: t.outputs[0].name for t in inserted[1::2]
                   if t.outputs and t.outputs[0].name in live}
        return PassResult(rewritten > 0, stats, renamed=renamed)
