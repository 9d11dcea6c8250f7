"""``merge_duplicate_initializers``: constants with the same type, shape and bytes stored once (weight tying)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from graphopt.core.ir import peek_values
from graphopt.core.pass_infra import Pass, PassResult, register_pass

from ._graph_edits import kept_names

__all__ = ["MergeDuplicateInitializers"]

# Elements compared before whole arrays: trained weights of one shape differ within them, so only true duplicates
# (and constant fills) are read in full.
_PREFIX = 1024


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bytes (equal values for strings)."""
    if a.dtype == object:
        return a.reshape(-1).tolist() == b.reshape(-1).tolist()
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _prefix(a: np.ndarray) -> bytes | tuple:
    head = a.reshape(-1)[:_PREFIX]
    return tuple(head.tolist()) if a.dtype == object else head.tobytes()


@register_pass("merge_duplicate_initializers")
class MergeDuplicateInitializers(Pass):
    """Initializers with the same element type, shape and bytes become one: every node of the main graph reading a
    copy reads the first instead, and the copies are dropped. Compared byte for byte (so -0.0 and 0.0 differ and
    equal NaNs match, which is what a reader sees); strings by value. Initializers that are graph outputs are
    left (their names stay). Exact: the readers see the same values.

    Why: a smaller model file and fewer constants for ATC to hold, and duplicated constants no longer hide equal
    nodes from ``eliminate_common_subexpressions`` (which compares large constants by identity). Sources:
    onnxslim ``weight_tying.py`` (compares with ``np.array_equal`` below 1000 elements: 0.0 equals -0.0 there);
    onnx-ir ``initializer_deduplication.py`` (type, shape and bytes; skips graph inputs and outputs).
    """

    library = True

    def run(self, graph: gs.Graph) -> PassResult:
        kept = kept_names(graph)
        readers: dict[int, list[tuple[gs.Node, int]]] = defaultdict(list)
        constants: dict[int, gs.Constant] = {}
        for node in graph.nodes:
            for i, t in enumerate(node.inputs):
                if isinstance(t, gs.Constant) and id(t) not in kept:
                    readers[id(t)].append((node, i))
                    constants.setdefault(id(t), t)
        groups: dict[tuple, list[gs.Constant]] = defaultdict(list)
        for c in constants.values():
            groups[(str(c.dtype), str(c.export_dtype), tuple(c.shape))].append(c)
        merged = saved = 0
        for members in groups.values():
            if len(members) < 2:
                continue
            by_prefix: dict[bytes | tuple, list[tuple[gs.Constant, np.ndarray]]] = defaultdict(list)
            for c in members:
                a = peek_values(c)
                candidates = by_prefix[_prefix(a)]
                twin = next((k for k, ka in candidates if _same(ka, a)), None)
                if twin is None:
                    candidates.append((c, a))
                    continue
                for node, i in readers[id(c)]:
                    node.inputs[i] = twin
                merged += 1
                saved += a.nbytes
        return PassResult(merged > 0, {"rewritten": merged, "bytes_saved": saved, "skipped": {}})
