"""Running a model on a verification set: one onnxruntime session per model, every feed checked against the
model's inputs first, the outputs kept per feed (``Outputs``) for ``graphopt.core.verify.compare_outputs``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from google.protobuf.message import EncodeError

from .errors import UserError
from .feeds import feeds_of
from .model_inputs import ModelInput, check_feed, np_dtype
from .sessions import create_session

__all__ = ["Outputs", "Runner", "comparison_session", "ORT_DOMAINS"]


class Outputs(dict):
    """Output name -> the outputs of every feed concatenated along the first axis (what ``Runner.run`` returns;
    scalars stacked; outputs whose shapes differ beyond the first axis from feed to feed flattened and joined),
    remembering each feed's own array (``per_feed``) and shape (``batch_shapes``): a comparison measures per feed
    and reports shapes per sample, not the concatenation's."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_shapes: Mapping[str, Sequence[tuple[int, ...]]],
                 per_feed: Mapping[str, Sequence[np.ndarray]] | None = None):
        super().__init__(arrays)
        self.batch_shapes = {k: [tuple(s) for s in v] for k, v in batch_shapes.items()}
        self.per_feed = {k: list(v) for k, v in (per_feed or {}).items()}

    @classmethod
    def of_feeds(cls, per_feed: Mapping[str, Sequence[np.ndarray]]) -> "Outputs":
        arrays = {}
        for n, v in per_feed.items():
            if not v:
                arrays[n] = np.zeros((0,), np.float32)
            elif v[0].ndim == 0:
                arrays[n] = np.stack(v)
            elif all(x.shape[1:] == v[0].shape[1:] for x in v):
                arrays[n] = np.concatenate(v)
            else:
                arrays[n] = np.concatenate([x.ravel() for x in v])
        return cls(arrays, {n: [x.shape for x in v] for n, v in per_feed.items()}, per_feed)


ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                         "com.microsoft.experimental", "com.ms.internal.nhwc", "ai.onnx.preview.training"})


def _custom_ops(model: onnx.ModelProto | bytes | str | Path) -> list[str]:
    """``domain::Op`` of every node (subgraphs included) whose domain onnxruntime does not implement."""
    try:
        if isinstance(model, (str, Path)):
            model = onnx.load(str(model), load_external_data=False)
        elif isinstance(model, bytes):
            model = onnx.load_from_string(model)
    except Exception:  # noqa: BLE001 - only for a hint in an error message
        return []
    local = {f.domain for f in model.functions}
    found: dict[str, None] = {}
    todo = [model.graph]
    while todo:
        g = todo.pop()
        for node in g.node:
            if node.domain not in ORT_DOMAINS and node.domain not in local:
                found[f"{node.domain}::{node.op_type}"] = None
            for a in node.attribute:
                todo.extend([a.g] if a.HasField("g") else a.graphs)
    return list(found)


def comparison_session(model, *, threads: int | None = None, spinning: bool = True):
    """The onnxruntime session every numeric comparison runs in (verification, diff, bisect):
    ``create_session(..., "compare")`` with ``threads`` and ``spinning``. Of a path, serialized bytes, a ``Model``
    or a ``SplitModel``; returns it and the feeds it needs besides the model's inputs: a model's weights become
    graph inputs fed with their arrays, which onnxruntime reads where they are (``Model.session``; handed over as
    initializers, it would copy them all)."""
    from .model import Model  # onnx-graphsurgeon: imported when needed
    from .wire import SplitModel

    if isinstance(model, SplitModel):
        model = Model(model)
    if isinstance(model, Model):
        return model.session("compare", threads=threads, spinning=spinning)
    return create_session(model, "compare", threads=threads, spinning=spinning), {}


def _ort_error(e: Exception, weights: Mapping[str, Any]) -> str:
    """onnxruntime's first error line, with the weights graphopt feeds as inputs left out of any list of names."""
    import re

    line = str(e).splitlines()[0] if str(e) else type(e).__name__
    if weights:
        def keep(m: "re.Match[str]") -> str:
            names = re.findall(r"'([^']*)'", m.group(0))
            real = [n for n in names if n not in weights]
            return "[" + ", ".join(repr(n) for n in real) + "]"

        line = re.sub(r"\[(?:'[^']*'(?:,\s*)?)+\]", keep, line)
    return line


class Runner:
    """Runs an ONNX model in onnxruntime (CPU) on a verification set (a list of feeds, each a dict input name ->
    array holding every input of the model; see ``graphopt.core.feeds``), one session per model. ``model`` may be a
    path, which onnxruntime loads with the external data beside it, or a ``graphopt.core.model.Model`` (or a
    ``wire.SplitModel``), whose weights it reads without a copy (how models over 2 GB run; a ModelProto that large
    is split first).

    ``inputs``: the model's real inputs (``graphopt.core.model_inputs.ModelInput``), weights left out. Each feed is
    checked against them before onnxruntime sees it (``check_feed``: a missing input, a wrong dtype or rank is one
    line naming the input; inputs the model does not take are left out of a feed, since a pass may drop a graph
    input nothing reads). The single-input form works too: ``input_name`` (default the first input)
    and ``run`` given bare arrays feeds them to that input. ``threads``, ``spinning``: the session's intra-op pool
    (``sessions.session_options``), for a run beside other work."""

    def __init__(self, model, input_name: str | None = None, what: str = "", *, threads: int | None = None,
                 spinning: bool = True):
        from .model import Model
        from .wire import SplitModel

        self.what = what  # names the model in feed errors ("model B")
        pool = {"threads": threads, "spinning": spinning}

        try:
            if isinstance(model, (str, Path, bytes, SplitModel, Model)):
                self.session, self.weights = comparison_session(str(model) if isinstance(model, Path) else model,
                                                                **pool)
            else:
                try:
                    data = model.SerializeToString()
                except (ValueError, EncodeError):  # over 2 GiB: the weights fed from arrays instead
                    data = Model.from_proto(model)
                self.session, self.weights = comparison_session(data, **pool)
        except UserError:
            raise
        except Exception as e:
            custom = _custom_ops(model.skeleton if isinstance(model, SplitModel) else
                                 model.split().skeleton if isinstance(model, Model) else model)
            if custom:
                shown = ", ".join(custom[:4]) + (f" and {len(custom) - 4} more" if len(custom) > 4 else "")
                raise UserError(f"onnxruntime cannot run the model's custom-domain ops ({shown}), so it cannot be "
                                "verified: turn verification off (--no-verify, or verify: {enabled: false}) or "
                                "use an onnxruntime build that registers them") from None
            who = f"{what}: " if what else ""
            raise UserError(f"{who}onnxruntime cannot load the model: {_ort_error(e, {})}") from None
        names = [i.name for i in self.session.get_inputs() if i.name not in self.weights]
        self.inputs = [self._from_session(n) for n in names]
        self.input_names = names
        if input_name is not None and input_name not in names:
            raise UserError(f"model has no input {input_name!r} (inputs: {', '.join(names) or 'none'})")
        self.input_name = input_name or (names[0] if names else None)
        self.output_names = [o.name for o in self.session.get_outputs()]
        types = [t.type for t in (*self.session.get_inputs(), *self.session.get_outputs())]
        self._bf16 = any("bfloat16" in t for t in types)

    _ORT_TYPES = {"float": "float32", "double": "float64"}

    def _from_session(self, name: str):
        """The input as onnxruntime sees it (no second read of the model): dtype name and dims."""
        i = next(i for i in self.session.get_inputs() if i.name == name)
        if not i.type.startswith("tensor("):
            kind = {"seq": "sequence", "map": "map", "optional": "optional"}.get(i.type.split("(")[0], i.type)
            return ModelInput(name, None, None, kind)
        elem = i.type[len("tensor("):-1]
        dims = tuple(d if isinstance(d, int) else (d or None) for d in i.shape) if i.shape is not None else None
        return ModelInput(name, self._ORT_TYPES.get(elem, elem), dims)

    def run(self, feeds: Sequence[Mapping[str, np.ndarray] | np.ndarray], run_options=None) -> Outputs:
        """Outputs of every feed (``Outputs``: per feed, and concatenated along the first axis). Bare arrays are
        feeds of ``input_name``. ``run_options``: onnxruntime ``RunOptions`` (another thread setting
        ``terminate`` cancels the run)."""
        per_output: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for feed in feeds_of(feeds, self.input_name, self.inputs):
            # Inputs the model does not take are left out: a pass may drop a graph input nothing reads.
            check_feed(self.inputs, feed, self.what, strict=False)
            feed = {k: v for k, v in feed.items() if k in self.input_names}
            try:
                outs = self._run({**feed, **self.weights}, run_options)
            except Exception as e:
                shown = ", ".join(f"{k!r} shaped {list(np.shape(v))}" for k, v in feed.items())
                raise UserError(f"onnxruntime failed on input {shown}: {_ort_error(e, self.weights)}") from None
            for n, o in zip(self.output_names, outs):
                per_output[n].append(np.asarray(o))
        return Outputs.of_feeds(per_output)

    def _run(self, feed: dict, run_options) -> list:
        if not self._bf16:
            return self.session.run(self.output_names, feed, run_options)
        # numpy has no bfloat16 onnxruntime knows: such tensors go in and come out as OrtValues (ml_dtypes' bfloat16
        # on graphopt's side).
        import ctypes

        import onnxruntime as ort

        values = {}
        for k, v in feed.items():
            if isinstance(v, np.ndarray) and v.dtype.name == "bfloat16":
                values[k] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(v).view(np.uint16), onnx_element_type=onnx.TensorProto.BFLOAT16)
            else:
                values[k] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
        outs = self.session.run_with_ort_values(self.output_names, values, run_options)
        result = []
        for o in outs:
            if o.data_type() == "tensor(bfloat16)":
                n = int(np.prod(o.shape()))
                raw = np.ctypeslib.as_array((ctypes.c_uint16 * max(n, 1)).from_address(o.data_ptr()))[:n].copy()
                result.append(raw.view(np_dtype("bfloat16")).reshape(o.shape()))
            else:
                result.append(o.numpy())
        return result
