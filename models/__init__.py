"""One exporter per model. Importing this package registers every built-in exporter."""
from __future__ import annotations

import importlib

__all__ = ["BUILTIN_MODULES"]

BUILTIN_MODULES = ("lvvit", "shiftvit", "timm_models", "efficientnet_lite")

for _name in BUILTIN_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as e:  # a module of ours not written yet would be a bug: only skip missing files
        if e.name != f"{__name__}.{_name}":
            raise
