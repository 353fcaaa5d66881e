"""Typed config trees: dataclasses filled from YAML/JSON dicts with every key and value checked.

``build(cls, data, source)`` turns a plain dict into a dataclass instance. Unknown keys, wrong types and
values outside a field's ``choices`` raise ConfigError naming the file, line, dotted key, the bad value
and the valid choices (with the nearest name for a typo); a value set by a command-line override is named
by that override (``override train.lr=nan``) rather than by a line of the file. Floats must be finite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from modaloom.errors import ConfigError, choices_text, nearest

T = TypeVar("T")


def choice(default: Any, *choices: Any, doc: str = "") -> Any:
    """A dataclass field whose value must be one of ``choices``."""
    return field(default=default, metadata={"choices": choices, "doc": doc})


@dataclass
class Source:
    """Where a config came from, so that errors can point at a file and line."""

    file: str | None = None
    lines: dict[str, int] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)  # dotted key -> the "key=value" that set it

    def where(self, path: str) -> str:
        for key in sorted(self.overrides, key=len, reverse=True):  # the most specific override wins
            if path == key or path.startswith(key + "."):
                text = f"override {self.overrides[key]}" + (f" (config {self.file})" if self.file else "")
                return text if path == key else f"{text}: {path}"
        parts = []
        if self.file:
            line = self.lines.get(path)
            parts.append(f"{self.file}:{line}" if line else self.file)
        parts.append(path or "<root>")
        return ": ".join(parts)


def _compose_with_lines(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) else key_node.value
            sub = f"{path}.{key}" if path else str(key)
            lines[sub] = key_node.start_mark.line + 1
            out[str(key)] = _compose_with_lines(value_node, sub, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_compose_with_lines(item, f"{path}.{i}", lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def load_document(path: str | Path) -> tuple[dict[str, Any], Source]:
    """Read a YAML or JSON file into a dict plus the line of every key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = _compose_with_lines(node, "", lines) if node is not None else {}
    except yaml.YAMLError as exc:
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as jexc:
                raise ConfigError(f"{path}:{jexc.lineno}: invalid JSON: {jexc.msg}") from None
        else:
            mark = getattr(exc, "problem_mark", None)
            loc = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{loc}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data, Source(str(path), lines)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(arg)}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str, source: Source) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{source.where(path)}: expected {_type_name(tp)}, got {value!r}"
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source.where(path)}: expected a mapping, got {value!r}")
        return build(tp, value, source, path)
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{source.where(path)}: expected {_type_name(tp)}, got {value!r}")
        return [_convert(arg, v, f"{path}.{i}", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source.where(path)}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source.where(path)}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source.where(path)}: expected an integer, got {value!r}")
    if tp is float:
        return _finite_float(value, path, source)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source.where(path)}: expected a string, got {value!r}")
    return value


def _finite_float(value: Any, path: str, source: Source) -> float:
    """A number, or a string that reads as one; NaN and infinities are refused (a NaN lr trains nothing)."""
    number: float | None = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
        except OverflowError:  # an integer beyond the float range
            number = math.inf
    if number is None:
        raise ConfigError(f"{source.where(path)}: expected a number, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{source.where(path)}: expected a finite number, got {value!r}")
    return number


def build(cls: type[T], data: dict[str, Any], source: Source | None = None, path: str = "") -> T:
    """Fill dataclass ``cls`` from ``data``, checking keys, types and choices; then run its ``validate``."""
    source = source or Source()
    select = getattr(cls, "select_class", None)
    if select is not None:  # a section whose fields come from the parts it selects (model_config.Section)
        cls = select(data, source.where(path))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key not in fields:
            owner = f" for {cls.describe(data)}" if hasattr(cls, "describe") else ""
            raise ConfigError(
                f"{source.where(sub)}: unknown key {key!r}{owner}{nearest(key, fields)}; "
                f"valid keys: {choices_text(fields)}"
            )
        converted = _convert(hints[key], value, sub, source)
        allowed = fields[key].metadata.get("choices")
        if allowed and converted not in allowed:
            raise ConfigError(
                f"{source.where(sub)}: bad value {converted!r}{nearest(converted, allowed)}; "
                f"valid choices: {choices_text(allowed)}"
            )
        kwargs[key] = converted
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as exc:
            raise ConfigError(f"{source.where(path)}: {exc}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain JSON-ready values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``; list items are addressed by index."""
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            index = _list_index(node, key, dotted)
            if index == len(node):
                node.append({})
            node = node[index]
            continue
        nxt = node.get(key)
        if nxt is None:
            nxt = [] if keys[i + 1].isdigit() else {}
            node[key] = nxt
        node = nxt
    last = keys[-1]
    if isinstance(node, list):
        index = _list_index(node, last, dotted)
        if index == len(node):
            node.append(value)
        else:
            node[index] = value
    else:
        node[last] = value


def _list_index(node: list, key: str, dotted: str) -> int:
    if not key.isdigit() or int(key) > len(node):
        raise ConfigError(f"override {dotted!r}: {key!r} is not an index of a list of {len(node)} items")
    return int(key)


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are read as YAML scalars (numbers, booleans, lists)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return out
