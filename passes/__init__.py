"""Built-in passes, one module per pass. Importing this package registers them all."""
from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
