"""Exporters and the export cache.

An exporter (one module per model in ``models/``) says how to build a PyTorch model and how to export it: input
and output names, opset, default input size, and how to map an upstream checkpoint's keys onto the module.
``export_cached`` builds the model with seeded random weights, loads a checkpoint when given
(``torch.load(weights_only=True)``, never a pickled module), exports ONNX with a dynamic batch axis and keeps the
result under ``$GRAPHOPT_CACHE`` (default ``~/.cache/graphopt``), keyed by a hash of everything that changes the
export, so a second run reuses it.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import io
import json
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..core.errors import UserError, closest
from ..core.files import atomic_write_bytes, cache_dir

__all__ = [
    "Exporter",
    "register_exporter",
    "square_image",
    "get_exporter",
    "list_exporters",
    "exporter_names",
    "cache_key",
    "cache_dir",
    "cached_export_path",
    "export_cached",
    "load_checkpoint",
]

_EXPORTERS: dict[str, "Exporter"] = {}
# Bump when the export procedure itself changes, so stale cache entries are not reused.
EXPORT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Exporter:
    """How one model is built and exported.

    ``build(**args)`` returns an ``nn.Module`` in eval mode with seeded random weights (the caller seeds torch).
    ``convert_checkpoint(state_dict) -> state_dict`` maps an upstream key layout onto the module; the default
    keeps keys as they are. ``input_size`` is (C, H, W) or a callable of the build arguments returning it.
    """

    name: str
    build: Callable[..., Any]
    input_name: str
    output_names: tuple[str, ...]
    opset: int
    input_size: tuple[int, int, int] | Callable[[Mapping[str, Any]], tuple[int, int, int]]
    description: str = ""
    convert_checkpoint: Callable[[dict], dict] | None = None
    default_args: Mapping[str, Any] = field(default_factory=dict)

    def size_for(self, args: Mapping[str, Any]) -> tuple[int, int, int]:
        size = self.input_size(args) if callable(self.input_size) else self.input_size
        return tuple(int(s) for s in size)  # type: ignore[return-value]


def square_image(default: int):
    """An ``Exporter.input_size`` for an RGB model taking ``img_size`` x ``img_size`` (``default`` when the args
    do not say)."""
    def input_size(args) -> tuple[int, int, int]:
        size = int(args.get("img_size", default))
        return (3, size, size)

    return input_size


def register_exporter(exporter: Exporter) -> Exporter:
    if exporter.name in _EXPORTERS:
        raise ValueError(f"exporter {exporter.name!r} registered twice")
    _EXPORTERS[exporter.name] = exporter
    return exporter


def _builtin() -> dict[str, tuple[str, tuple[str, ...]]]:
    from ..models import EXPORTERS  # a plain table: no model module (no torch) is imported

    return EXPORTERS


def exporter_names() -> list[str]:
    """Every exporter name, built in or registered at run time, without importing any model module."""
    return sorted(set(_builtin()) | set(_EXPORTERS))


def get_exporter(name: str) -> Exporter:
    if name not in _EXPORTERS and name in _builtin():
        importlib.import_module(f"graphopt.models.{_builtin()[name][0]}")
    if name not in _EXPORTERS:
        raise UserError(f"unknown exporter {name!r}{closest(name, exporter_names())}")
    return _EXPORTERS[name]


def list_exporters() -> list[Exporter]:
    return [get_exporter(name) for name in exporter_names()]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dist_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _module_source(name: str) -> tuple[str | None, tuple[str, ...]]:
    """(sha256 of the exporter's module source, extra distributions), found without importing the module."""
    if name in _builtin():
        module, dists = _builtin()[name]
        spec = importlib.util.find_spec(f"graphopt.models.{module}")
        path = spec.origin if spec else None
    else:  # registered at run time (a user's or a test's exporter): its module is already imported
        path, dists = inspect.getsourcefile(_EXPORTERS[name].build), ()
    return (_file_sha256(Path(path)) if path and Path(path).is_file() else None), dists


def cache_key(name: str, args: Mapping[str, Any], checkpoint: Path | None, opset: int | None,
              input_size: tuple[int, ...] | None, seed: int) -> str:
    """Hash of everything that changes an export; computed without importing torch or the model module, so a
    cache hit costs milliseconds. ``opset`` / ``input_size`` None mean the exporter's defaults (which are in its
    source, hashed here)."""
    source, dists = _module_source(name)
    payload = {
        "exporter": name,
        "source": source,  # editing a model definition invalidates its cached exports
        "args": dict(sorted(args.items())),
        "checkpoint": _file_sha256(checkpoint) if checkpoint else None,
        "opset": opset,
        "input_size": list(input_size) if input_size else None,
        "seed": seed,
        "versions": {d: _dist_version(d) for d in ("torch", "torchvision", "timm", "onnx", *dists)},
        "format": EXPORT_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_checkpoint(path: Path) -> dict:
    """Load a state dict safely. Whole pickled modules are refused (unpickling runs arbitrary code)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        with open(path, "rb") as f:
            head = f.read(4)
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # neither torch zip nor pickle
            raise UserError(f"checkpoint {path}: not a PyTorch checkpoint (unknown file format)") from None
        raise UserError(
            f"checkpoint {path}: holds pickled Python objects (e.g. a whole nn.Module), which graphopt will not "
            "unpickle. Convert it once, in a trusted environment, to a plain state dict: "
            "torch.save(torch.load(f, weights_only=False).state_dict(), 'state_dict.pth') "
            f"(for DataParallel use .module.state_dict()). Detail: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # corrupt archive, not a torch file, ...
        raise UserError(f"checkpoint {path}: cannot be read by torch.load ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    # Common wrappers used by training scripts.
    for key in ("state_dict", "model", "model_ema", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise UserError(f"checkpoint {path}: not a state dict (found {type(obj).__name__})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def _apply_checkpoint(model: Any, exporter: Exporter, path: Path) -> None:
    state = load_checkpoint(path)
    if exporter.convert_checkpoint is not None:
        state = exporter.convert_checkpoint(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "") if keys else "none"

        raise UserError(f"checkpoint {path}: keys do not match exporter {exporter.name!r}: "
                        f"missing {show(missing)}; unexpected {show(unexpected)}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise UserError(f"checkpoint {path}: shape mismatch for {k}: checkpoint {tuple(state[k].shape)}, "
                        f"model {tuple(own[k].shape)} ({len(bad)} mismatching tensors)")
    model.load_state_dict(state, strict=True)


def export_to_bytes(exporter: Exporter, args: Mapping[str, Any], checkpoint: Path | None, opset: int,
                    input_size: tuple[int, int, int], seed: int = 0) -> bytes:
    import torch

    torch.manual_seed(seed)
    try:
        model = exporter.build(**{**exporter.default_args, **args})
    except TypeError as e:
        raise UserError(f"exporter {exporter.name!r}: bad arguments {dict(args)}: {e}") from None
    if checkpoint is not None:
        _apply_checkpoint(model, exporter, checkpoint)
    model.eval()
    dummy = torch.randn(1, *input_size)
    dynamic = {exporter.input_name: {0: "batch"}, **{o: {0: "batch"} for o in exporter.output_names}}
    buf = io.BytesIO()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: it honours the seeds' opsets (11-13), which the dynamo exporter does not.
        torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=opset,
                          input_names=[exporter.input_name], output_names=list(exporter.output_names),
                          dynamic_axes=dynamic, do_constant_folding=True)
    return buf.getvalue()


def cached_export_path(name: str, args: Mapping[str, Any] | None = None, checkpoint: str | Path | None = None,
                       opset: int | None = None, input_size: tuple[int, int, int] | None = None,
                       seed: int = 0) -> Path:
    """Where ``export_cached`` keeps (or will keep) this export; reading the checkpoint may raise ``OSError``."""
    ckpt = Path(checkpoint) if checkpoint else None
    key = cache_key(name, dict(args or {}), ckpt, opset, tuple(input_size) if input_size else None, seed)
    return cache_dir() / f"{name}-{key}.onnx"


def export_cached(name: str, args: Mapping[str, Any] | None = None, checkpoint: str | Path | None = None,
                  opset: int | None = None, input_size: tuple[int, int, int] | None = None, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """Return (path of the exported ONNX in the cache, whether it came from the cache)."""
    if name not in exporter_names():
        get_exporter(name)  # raises the "unknown exporter" error
    args = dict(args or {})
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"checkpoint {ckpt}: no such file")
    path = cached_export_path(name, args, ckpt, opset, input_size, seed)
    if path.is_file():
        if progress:
            progress(f"export: reusing cached {path}")
        return path, True
    exporter = get_exporter(name)
    opset = opset or exporter.opset
    size = input_size or exporter.size_for({**exporter.default_args, **args})
    if progress:
        progress(f"export: building {exporter.name} and exporting ONNX (opset {opset}) ...")
    data = export_to_bytes(exporter, args, ckpt, opset, size, seed)
    atomic_write_bytes(path, data)
    if progress:
        progress(f"export: cached {path} ({len(data) / 1e6:.1f} MB)")
    return path, False
