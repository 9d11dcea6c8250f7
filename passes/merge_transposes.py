"""``merge_transposes``: two Transposes in a row composed into one, removed when they cancel."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from graphopt.core.pass_infra import PassResult, register_pass
from graphopt.core.rules import Match, NodeBuilder, RewritePass

from ._graph_edits import bypass, drop_then_merge, kept_names

__all__ = ["MergeTransposes", "composed_perm"]


def composed_perm(first: list[int] | None, second: list[int] | None, rank: int | None) -> list[int] | None:
    """The perm of ``Transpose(Transpose(x, first), second)``: ``c[i] = first[second[i]]``. A missing perm reverses
    the axes (ONNX's default), which needs the rank; two reversals cancel at any rank. None when unknown."""
    if first is None and second is None:
        return None if rank is None else list(range(rank))
    rank = len(first) if first is not None else len(second)
    first = list(range(rank))[::-1] if first is None else list(first)
    second = list(range(rank))[::-1] if second is None else list(second)
    if len(first) != len(second):
        return None
    return [first[i] for i in second]


@register_pass("merge_transposes")
class MergeTransposes(RewritePass):
    """``Transpose(Transpose(x, p0), p1)`` -> ``Transpose(x, c)`` with ``c[i] = p0[p1[i]]``, and both removed when
    ``c`` is the identity; a single Transpose whose perm is the identity is removed too.

    Applies where the first Transpose is read by the second alone (else it would still be computed for its other
    readers: counted in ``skipped``) and both perms are known (a missing perm reverses the axes; two reversals
    cancel whatever the rank). A graph output keeps its name, through an Identity when the pair cancels. Exact: a
    Transpose moves data and computes nothing.

    Why: a Transpose is a real data-movement kernel on the Ascend AI Core (TransData / Transpose), and msit's
    knowledges remove them for speed (SplitQKVMatmul: "eliminates some Transpose ops to speed up inference";
    BNFolding cancels a Transpose / BN / Transpose sandwich). Sources: onnxslim ``EliminationTranspose``,
    onnxscript ``TransposeTranspose`` / ``TransposeIdentity`` (``rewriter/rules/common/_basic_rules.py``).
    """

    library = True
    count_misses = False  # a Transpose after anything but a Transpose is no candidate

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, perm=op.attr("p0")), perm=op.attr("p1"))

    def check(self, ctx: Match, x: gs.Tensor, p0, p1) -> str | None:
        if composed_perm(p0, p1, None if x.shape is None else len(x.shape)) is None:
            return "both perms are the default and the rank is unknown"
        return None

    def rewrite(self, op: NodeBuilder, ctx: Match, x: gs.Tensor, p0, p1) -> gs.Tensor | None:
        perm = composed_perm(p0, p1, None if x.shape is None else len(x.shape))
        if perm != list(range(len(perm))):
            return op.Transpose(x, perm=perm)
        bypass(ctx.root, x, self._kept, self._renamed)
        return None

    def _identities(self, graph: gs.Graph) -> int:
        removed = 0
        for node in list(graph.nodes):
            if node.op != "Transpose" or not node.outputs or node.domain not in (None, "", "ai.onnx"):
                continue
            perm = node.attrs.get("perm")
            x = node.inputs[0]
            rank = len(perm) if perm is not None else None if x.shape is None else len(x.shape)
            if perm is None and (rank is None or rank > 1):
                continue
            if perm is not None and list(perm) != list(range(rank)):
                continue
            bypass(node, x, self._kept, self._renamed)
            removed += 1
        return removed

    def run(self, graph: gs.Graph) -> PassResult:
        self._kept, self._renamed = kept_names(graph), {}
        return drop_then_merge(self, graph, "Transpose", lambda: self._identities(graph), "identity_perms",
                               self._kept, self._renamed)
