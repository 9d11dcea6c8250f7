"""YAML as graphopt reads it, and typed reading of its mappings.

``YamlLoader`` is PyYAML's safe loader, except that plain numbers are floats as YAML 1.2 reads them (``1e-4`` is a
float, not the string YAML 1.1 makes of it). ``Section`` reads one mapping against the keys it may hold and the
Python annotation each value must fit, so every mistake is one line naming the file and the YAML path
(``passes[2].axis``), with the closest valid names for an unknown key.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..core.errors import UserError, closest
from ..core.pass_infra import type_name

__all__ = ["YamlLoader", "load_yaml", "check_value", "Section", "resolve_path"]


FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.1's float forms (as PyYAML's resolver has them) with the exponent sign optional, plus YAML 1.2's forms 1.1
# lacks: digits with an exponent but no dot (1e-4, 2E5) and a signed leading dot (-.5). PyYAML implements YAML 1.1,
# where `max_abs: 1e-4` is the string '1e-4'; every user writing it means the number.
_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects: a recipe cannot run code) reading plain floats as YAML 1.2 does."""


# The float resolver replaced where it stands in each first-character list, so resolution order is unchanged.
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, _FLOAT_RE if tag == FLOAT_TAG else regexp) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":  # every character a float can start with
    if not any(tag == FLOAT_TAG for tag, _ in YamlLoader.yaml_implicit_resolvers.setdefault(_first, [])):
        YamlLoader.yaml_implicit_resolvers[_first].append((FLOAT_TAG, _FLOAT_RE))


def load_yaml(text: str) -> Any:
    """YAML text as graphopt reads every YAML file (``YamlLoader``); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - YamlLoader is a SafeLoader


def _is_instance(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_is_instance(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return all(_is_instance(v, inner) for v in value)
    if origin in (dict, typing.Mapping):
        if not isinstance(value, dict):
            return False
        kt, vt = args if args else (Any, Any)
        return all(_is_instance(k, kt) and _is_instance(v, vt) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def check_value(value: Any, tp: Any, where: str, file: str) -> Any:
    """``value`` if it fits annotation ``tp`` (an int where a float is expected becomes that float), else an error
    naming the YAML path ``where`` and what was expected."""
    if not _is_instance(value, tp):
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise UserError(f"{file}: {where}: expected {type_name(tp)}, got {type(value).__name__} {shown}")
    if tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and float in typing.get_args(tp)
                       and isinstance(value, int) and not isinstance(value, bool) and int not in typing.get_args(tp)):
        return float(value)
    return value


class Section:
    """A mapping being read, tracking its YAML path and reporting unknown keys."""

    def __init__(self, data: Any, where: str, file: str, keys: Iterable[str]):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{file}: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.file = data, where, file
        known = list(keys)
        for key in data:
            if not isinstance(key, str) or key not in known:
                raise UserError(f"{file}: {self.path(str(key))}: unknown key{closest(str(key), known)}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, tp: Any, default: Any = dataclasses.MISSING) -> Any:
        if key not in self.data:
            if default is dataclasses.MISSING:
                raise UserError(f"{self.file}: {self.path(key)}: required key is missing")
            return default
        return check_value(self.data[key], tp, self.path(key), self.file)


def resolve_path(base: Path | None, value: str | None, where: str, file: str, must_exist: bool = True) -> Path | None:
    """``value`` as a path, relative to ``base`` (the recipe's folder, so a recipe works from any working
    directory); a missing file is an error naming the YAML path ``where``."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    if must_exist and not p.exists():
        raise UserError(f"{file}: {where}: {value}: no such file")
    return p

