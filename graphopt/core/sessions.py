"""Every onnxruntime session graphopt builds comes from here: CPU, quiet unless ``-v``, and one of three
optimisation levels, named for what the session is for.

- ``"compare"``: verification, diff, bisect. Basic optimisations only, so a comparison measures the
  graph as written rather than onnxruntime's fusions of it; ``Pad_Fusion`` off, because it folds a zero Pad into a
  following MaxPool whose own padding is -inf, which is wrong whenever the padded input can be negative (BiT's
  stem: Conv -> Pad -> MaxPool; onnxsim/onnxsim#290).
- ``"evaluate"``: a value computed once (constant folding, a probe of a small subgraph). No optimisation: each op's
  own kernel, nothing fused into what is being evaluated, and the cheapest session to build.
- ``"deploy"``: the onnxruntime backend standing in for the NPU, latency races, and the fp16 emulation (whose fp32
  reference runs in the same session, so both see the same optimisations), with every optimisation a deployment
  would get.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import onnx

from .quiet import ort_log_severity

__all__ = ["Purpose", "session_options", "create_session"]

Purpose = Literal["compare", "evaluate", "deploy"]
# ops whose fusion changes results on inputs a model can see (see the module docstring)
_UNSAFE_FUSIONS = ("Pad_Fusion",)


def session_options(purpose: Purpose, threads: int | None = None, *, spinning: bool = True) -> Any:
    """``onnxruntime.SessionOptions`` for ``purpose``; ``threads`` sets the intra-op pool (None: onnxruntime's).
    ``spinning=False``: the pool's workers sleep between tasks instead of spinning, for a session that runs
    beside Python work it must not take a core from."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = ort_log_severity()  # fatal only unless -v (graphopt.core.quiet)
    opts.graph_optimization_level = {
        "compare": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "evaluate": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "deploy": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[purpose]
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def create_session(model: onnx.ModelProto | bytes | str | Path, purpose: Purpose, *, threads: int | None = None,
                   spinning: bool = True, keep_pad_fusion: bool = False) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``model`` (a ModelProto, its serialized bytes, or a path) on the CPU.

    ``Pad_Fusion`` stays off for "compare" and "deploy" unless ``keep_pad_fusion`` (a caller that has checked the
    model has no Pad feeding a pooling op). ``threads``, ``spinning``: as ``session_options``. Raises what
    onnxruntime raises; callers word it for their user."""
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    disabled = [] if purpose == "evaluate" or keep_pad_fusion else list(_UNSAFE_FUSIONS)
    return ort.InferenceSession(model, session_options(purpose, threads, spinning=spinning),
                                providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
