"""Small ONNX graphs shared by several test modules (ONNX textual syntax, for graphopt.testing.model_from_text)."""
from __future__ import annotations

from typing import Sequence

__all__ = ["TINY", "torch_onnx", "cli"]

# A last-axis Softmax of a rank-4 tensor: what softmax_transpose rewrites, small enough for any CLI or recipe test.
TINY = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 2, 3, 4] x) => (float[N, 2, 3, 4] y) {
    m = Mul(x, x)
    y = Softmax<axis=-1>(m)
}"""


def torch_onnx(module, args: tuple, *, opset: int, inputs: Sequence[str] = ("x",), outputs: Sequence[str] = ("y",),
               batch: str | None = "n", dynamic_axes: dict | None = None) -> bytes:
    """``module`` exported by the TorchScript exporter (as graphopt's exporters do) to ONNX bytes, without
    gradients and with its deprecation notices silenced. Dim 0 of every input and output is dynamic, named
    ``batch``, unless ``batch`` is None; ``dynamic_axes`` replaces that when given."""
    import io
    import warnings

    import torch

    if dynamic_axes is None and batch is not None:
        dynamic_axes = {name: {0: batch} for name in (*inputs, *outputs)}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=list(inputs),
                          output_names=list(outputs), dynamic_axes=dynamic_axes)
    return buf.getvalue()


def cli(capsys, *args) -> tuple[int, str, list[str]]:
    """The CLI in process: (exit code, stdout, the 'graphopt: ...' lines of stderr); never a traceback."""
    from graphopt.commands.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith("graphopt: ")]
