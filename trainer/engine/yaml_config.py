"""Typed configs from YAML: a dataclass tree built from a mapping plus `key=value` overrides.

    cfg = load_yaml_config(PretrainConfig, Path("run.yaml"), ["optim.lr=3e-4"])

Overrides use dotted paths and YAML values (`deepspeed.zero_stage=3`, `model={size: tiny}`).
Building names unknown keys and wrong types by their dotted path; ints become floats where a float
is expected (and "1e-4", which YAML 1.1 reads as a string). Validation of values is the
dataclasses' own (`__post_init__`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


def load_yaml_config(cls, path: Path | None, overrides: list[str] | tuple[str, ...] = ()):
    """Dataclass `cls` built from the YAML mapping at `path` (None: empty) plus `key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a config is a YAML mapping, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return build(cls, raw, "")


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML) in a nested dict, creating sections as needed."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def build(cls, raw: dict[str, Any], prefix: str):
    """Build dataclass `cls` from a nested dict, naming unknown keys and wrong types by path."""
    if not isinstance(raw, dict):
        raise ValueError(f"config section {prefix or '<root>'!r} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; "
                         f"valid in {prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, hint, prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'}: {exc}") from exc


def coerce(value: Any, hint: Any, path: str) -> Any:
    """Check a YAML value against a field's type; ints become floats where a float is expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, path)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    if hint is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(coerce(v, item, path) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)     # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            pass
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


def plain(obj: Any) -> Any:
    """Tuples as lists, recursively (YAML/JSON-ready)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
