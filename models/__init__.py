"""One exporter per model. Importing this package registers every built-in exporter."""
from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
