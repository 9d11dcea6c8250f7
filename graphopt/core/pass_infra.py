"""The pass framework: ``Pass``, ``PassResult`` and the registry.

A pass is a dataclass registered under the name recipes use. Its fields are its typed keyword parameters (the
YAML keys); its docstring states the rewrite; ``run(graph) -> PassResult`` edits an onnx-graphsurgeon graph in
place and says whether it changed anything, with counters in ``stats``. A pass knows nothing about files, CLIs or
other passes: configuration it wants handed to the compiler (an op precision mode, a mixlist) goes in
``PassResult.configs`` and the pipeline writes the files.

Passes come from three places, all loaded the same way (importing a module registers the passes it defines):
the built-in ``graphopt.passes``; the entry-point group ``graphopt.passes`` of installed packages (each entry point
names a Pass subclass, or a module whose import registers passes); and modules named by a recipe's ``plugins:`` or
``graphopt --plugin MODULE`` (``load_plugin``). The built-in package is imported by name, as plugins are: the
framework does not depend on the passes written on it. A built-in pass is looked up first in the module of its name
alone (``graphopt.passes.<name>``): applying a recipe imports the passes it names, not the other built-ins, entry
points or their dependencies; anything that lists passes, or a name no built-in module has, loads them all.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import sys
import typing
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

import onnx_graphsurgeon as gs

__all__ = [
    "Pass",
    "PassResult",
    "Param",
    "register_pass",
    "get_pass",
    "all_passes",
    "pass_params",
    "ENTRY_POINT_GROUP",
    "plugin_errors",
    "load_plugin",
    "library_passes",
]

ENTRY_POINT_GROUP = "graphopt.passes"
_BUILTIN = "graphopt.passes"  # the package of built-in passes: each public module registers the pass of its name
_REGISTRY: dict[str, type["Pass"]] = {}
_loaded = False
# entry point name -> one line saying why it could not be loaded (its passes are missing; everything else works)
_PLUGIN_ERRORS: dict[str, str] = {}


@dataclass
class PassResult:
    """What a pass did. ``stats`` holds counters and reasons (e.g. ``{"rewritten": 16, "skipped": {...}}``);
    ``configs`` holds compiler configuration contributions, merged by the pipeline:
    ``op_precision`` {OpType: mode}, ``mixlist`` {"black-list": {"to-add": [...]}, ...}, ``precision_mode`` str,
    ``keep_dtype`` [node names or OpType::TypeName]. ``renamed`` ({new tensor name: old name}) declares tensors
    the pass renamed, or kept under their name with a different producer op, so ``graphopt diff`` and the name
    map in ``report.json`` can trace them (``graphopt.core.name_map``); tensors keeping name and producer op type are
    traced without it."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    name: str
    type: Any
    default: Any
    help: str

    @property
    def type_name(self) -> str:
        return type_name(self.type)


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


class Pass:
    """Base class. Subclasses are ``@register_pass``-decorated dataclasses; see the README's "Writing a pass".

    Field metadata ``help`` documents a parameter: ``axis: int = field(default=-1, metadata={"help": "..."})``.
    """

    name: ClassVar[str] = ""
    # In the porting knowledge library: the rewrites ``graphopt optimize`` runs to a fixed point, each safe on any
    # model (it rewrites only what it fully matches) and needing no parameter.
    library: ClassVar[bool] = False
    # What the pass needs the pipeline to supply before it runs: "calibration" sets ``calibration`` to the
    # verification feeds and whether they are real data (graphopt.core.instruments.Requirements).
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: gs.Graph) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, graph: gs.Graph) -> PassResult:
        result = self.run(graph)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass {self.name!r} returned {type(result).__name__}, expected PassResult")
        return result

    @classmethod
    def summary(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.split("\n\n")[0].replace("\n", " ")


def register_pass(name: str):
    """Class decorator: make ``cls`` a dataclass (if it is not one) and register it under ``name``."""

    def wrap(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"@register_pass({name!r}) needs a Pass subclass")
        if not dataclasses.is_dataclass(cls):
            cls = dataclass(cls)
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"pass {name!r} registered twice ({_REGISTRY[name].__module__}, {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module(_BUILTIN)  # its public modules register the built-in passes on import
    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")):
        importlib.import_module(f"{_BUILTIN}.{module}")

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken third-party package must not take every command down
            text = str(e).strip().splitlines()
            _PLUGIN_ERRORS[ep.name] = (f"plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: "
                                       f"{text[0] if text else ''}")
            print(f"graphopt: warning: {_PLUGIN_ERRORS[ep.name]}; its passes are unavailable", file=sys.stderr)
            continue
        if isinstance(obj, type) and issubclass(obj, Pass) and obj.name not in _REGISTRY:
            register_pass(obj.name or ep.name)(obj)


def load_plugin(module: str) -> None:
    """Import ``module`` (a dotted name on ``sys.path``), registering the passes it defines. A module that cannot
    be imported raises ``UserError`` naming it and why, in one line; loading one twice is a no-op."""
    from .errors import UserError

    _load_all()
    if module in sys.modules:
        return
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of a user's module is one line, not a traceback
        text = str(e).strip().splitlines()
        raise UserError(f"plugin {module!r} failed to load: {type(e).__name__}: {text[0] if text else ''}") from None


def plugin_errors() -> dict[str, str]:
    """Entry points of the ``graphopt.passes`` group that failed to load: name -> why (one line)."""
    _load_all()
    return dict(_PLUGIN_ERRORS)


def all_passes() -> dict[str, type[Pass]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def library_passes() -> dict[str, type[Pass]]:
    """The porting knowledge library (``Pass.library``), in the order ``graphopt optimize`` runs them: built-in
    modules by name, then plugins in the order they registered."""
    _load_all()
    order = {name: k for k, name in enumerate(_REGISTRY)}

    def key(item: tuple[str, type[Pass]]) -> tuple:
        name, cls = item
        builtin = cls.__module__.startswith(f"{_BUILTIN}.")
        return (0, cls.__module__, order[name]) if builtin else (1, "", order[name])

    return {name: cls for name, cls in sorted(_REGISTRY.items(), key=key) if cls.library}


def get_pass(name: str) -> type[Pass] | None:
    """The pass registered as ``name``: a built-in one from its own module alone, when nothing else is loaded
    yet; anything else once every pass is loaded. None when there is none."""
    if name not in _REGISTRY and not _loaded and name.isidentifier() and not name.startswith("_"):
        try:
            found = importlib.util.find_spec(f"{_BUILTIN}.{name}") is not None
        except ImportError:  # no built-in package (a broken install): every pass is loaded below, as it can be
            found = False
        if found:
            importlib.import_module(f"{_BUILTIN}.{name}")
    if name not in _REGISTRY:
        _load_all()
    return _REGISTRY.get(name)


def pass_params(cls: type[Pass]) -> list[Param]:
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        params.append(Param(f.name, hints.get(f.name, Any), default, f.metadata.get("help", "")))
    return params
