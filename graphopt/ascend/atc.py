"""The hand-off to Ascend's ATC compiler: config files in the formats ATC takes, and the commands.

- ``ops_info.json`` for ``--modify_mixlist`` (only honoured with ``--precision_mode=allow_mix_precision``):
  ``{"black-list": {"to-add": [...], "to-remove": [...]}, "white-list": {...}}`` of Ascend op types.
- ``op_precision.ini`` for ``--op_precision_mode``: ``OpType=mode`` lines (the bare form every CANN version reads).
- ``keep_dtype.cfg`` for ``--keep_dtype``: one node name or ``OpType::TypeName`` per line.
- ``atc.sh``: one ``atc`` command per batch size, ``--input_shape`` naming every input of the model
  (``image:16,3,224,224;meta:16,8``): the batch size goes into each input's first dim where that dim is the batch
  (symbolic in the model); every other dim is the verification shape's. ``--input_format=NCHW`` when every input
  is rank 4 (images), else ``ND``.
"""
from __future__ import annotations

import json
import shlex
from typing import Any, Mapping, Sequence

from ..core.errors import UserError

__all__ = ["ASCEND_OP_TYPES", "ascend_op_type", "ops_info_json", "op_precision_ini", "keep_dtype_cfg",
           "atc_commands", "atc_script", "config_files"]

# ONNX op type -> Ascend op type, as ATC names them in mixlists and precision files.
ASCEND_OP_TYPES: dict[str, str] = {
    "LayerNormalization": "LayerNorm",
    "Softmax": "SoftmaxV2",
    "Gelu": "Gelu",
    "MatMul": "MatMulV2",
    "Gemm": "MatMulV2",
    "ReduceMean": "ReduceMeanD",
    "Conv": "Conv2D",
    "Add": "Add",
    "Mul": "Mul",
    "Erf": "Erf",
    "Transpose": "TransposeD",
    "Pow": "Pow",
}


def ascend_op_type(op: str) -> str:
    """The Ascend name of an ONNX op type; Ascend names given directly (e.g. ``LayerNorm``) pass through."""
    return ASCEND_OP_TYPES.get(op, op)


def ops_info_json(mixlist: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    out: dict[str, dict[str, list[str]]] = {}
    for lst in ("black-list", "white-list"):
        if lst not in mixlist:
            continue
        for action in ("to-add", "to-remove"):
            names = mixlist[lst].get(action) or []
            if names:
                mapped: list[str] = []
                for n in names:
                    if ascend_op_type(n) not in mapped:
                        mapped.append(ascend_op_type(n))
                out.setdefault(lst, {})[action] = mapped
    unknown = set(mixlist) - {"black-list", "white-list"}
    if unknown:
        raise UserError(f"mixlist: unknown list {sorted(unknown)[0]!r} (ATC takes 'black-list' and 'white-list')")
    return json.dumps(out, indent=4) + "\n"


def op_precision_ini(op_precision: Mapping[str, str]) -> str:
    return "".join(f"{ascend_op_type(op)}={mode}\n" for op, mode in op_precision.items())


def keep_dtype_cfg(entries: Sequence[str]) -> str:
    return "".join(f"{e}\n" for e in entries)


def config_files(configs: Mapping[str, Any]) -> dict[str, str]:
    """File name -> content for the compiler configs the passes asked for."""
    files = {}
    if configs.get("mixlist"):
        files["ops_info.json"] = ops_info_json(configs["mixlist"])
    if configs.get("op_precision"):
        files["op_precision.ini"] = op_precision_ini(configs["op_precision"])
    if configs.get("keep_dtype"):
        files["keep_dtype.cfg"] = keep_dtype_cfg(configs["keep_dtype"])
    return files


def atc_commands(*, model: str, output_stem: str, inputs: Sequence[tuple[str, Sequence[int | None]]],
                 batch_sizes: Sequence[int], soc_version: str, log: str = "error", precision_mode: str | None = None,
                 configs: Mapping[str, Any] | None = None, extra_args: Sequence[str] = ()) -> list[list[str]]:
    """One ``atc`` command per batch size. ``inputs``: ``(name, dims)`` of every model input, None where the batch
    size goes (``InputPlan.atc_inputs()``)."""
    configs = configs or {}
    files = config_files(configs)
    mode = configs.get("precision_mode") or precision_mode
    if precision_mode and configs.get("precision_mode") and precision_mode != configs["precision_mode"]:
        raise UserError(f"atc.precision_mode is {precision_mode!r} but a pass needs {configs['precision_mode']!r}")
    if "ops_info.json" in files:
        if mode is None:
            mode = "allow_mix_precision"
        elif mode not in ("allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16"):
            raise UserError(f"atc.precision_mode {mode!r}: ATC only honours --modify_mixlist with "
                            "allow_mix_precision; change the precision mode or drop the mixlist pass")
    layout = "NCHW" if inputs and all(len(dims) == 4 for _, dims in inputs) else "ND"
    cmds = []
    for bs in batch_sizes:
        shapes = ";".join(f"{name}:" + ",".join(str(bs if d is None else d) for d in dims) for name, dims in inputs)
        cmd = ["atc", "--framework=5", f"--model={model}", f"--output={output_stem}_bs{bs}",
               f"--input_format={layout}", f"--input_shape={shapes}", f"--soc_version={soc_version}", f"--log={log}"]
        if mode:
            cmd.append(f"--precision_mode={mode}")
        if "ops_info.json" in files:
            cmd.append("--modify_mixlist=ops_info.json")
        if "op_precision.ini" in files:
            cmd.append("--op_precision_mode=op_precision.ini")
        if "keep_dtype.cfg" in files:
            cmd.append("--keep_dtype=keep_dtype.cfg")
        cmd.extend(extra_args)
        cmds.append(cmd)
    return cmds


def atc_script(commands: Sequence[Sequence[str]]) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Written by graphopt: compile model.onnx to one .om per batch size with Huawei ATC (CANN toolkit).",
        "# Run on a machine with CANN installed (source set_env.sh first); soc_version from `npu-smi info`.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "command -v atc >/dev/null || { echo 'atc not found: install CANN and source its set_env.sh' >&2; exit 127; }",
    ]
    lines += [" ".join(shlex.quote(a) for a in cmd) for cmd in commands]
    return "\n".join(lines) + "\n"
