"""Dataclasses from plain mappings (YAML or JSON sections): typed, validated, and one error
line naming the dotted key for anything wrong.

`from_mapping(cls, d)` builds the dataclass `cls` from a (partial) nested mapping; `Config`
(`mrcnn.config`) and the pipeline's `params.yaml` sections are read through it. A dataclass's
`validate()` reports a bad value with `check(ok, key, why)`; `from_mapping` puts the path to it
in front of the key:

    >>> from mrcnn.config import RPNConfig
    >>> from_mapping(RPNConfig, {"nms_thresh": 2.0}, prefix="rpn.")
    Traceback (most recent call last):
    ValueError: config key 'rpn.nms_thresh' must be in (0, 1]
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def check(ok: bool, key: str, why: str) -> None:
    """Raise "config key '<key>' <why>" unless `ok` (for a dataclass's `validate()`)."""
    if not ok:
        raise ValueError(f"config key '{key}' {why}")


def from_mapping(cls: type[T], d: Any, *, prefix: str = "", noun: str = "config key") -> T:
    """Build and validate the dataclass `cls` from a (partial) mapping.

    Unknown keys, values of the wrong type and values its `validate()` rejects raise
    `ValueError` naming the dotted key (`prefix` + key) after `noun`, e.g.
    "config key 'rpn.nms_thresh' must be in (0, 1]". Nested dataclass fields take nested
    mappings; ints pass for floats and lists for tuples. Shared by `Config.from_dict` and the
    pipeline's `params.yaml` sections.
    """
    where = prefix.rstrip(".") or "<root>"
    if dataclasses.is_dataclass(d) and type(d) is cls:
        d = dataclasses.asdict(d)
    if not isinstance(d, dict):
        raise ValueError(f"{noun} '{where}' must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields, key=str)  # YAML keys may be numbers or null too
    if unknown:
        raise ValueError(
            f"unknown {noun} '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_mapping(
                hint, {} if value is None else value, prefix=key + ".", noun=noun
            )
        else:
            kwargs[name] = _coerce(hint, value, key, noun)
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):
            obj.validate()
    except ValueError as e:
        raise ValueError(reprefix(str(e), prefix, noun)) from None
    return obj


def reprefix(message: str, prefix: str, noun: str = "config key") -> str:
    """ "config key 'k' ..." / "params key 'k' ..." -> "<noun> '<prefix>k' ..."; else unchanged."""
    for head in ("config key '", "params key '"):
        if message.startswith(head):
            return f"{noun} '{prefix}{message[len(head) :]}"
    return message


def to_plain(x: Any) -> Any:
    """Nested dicts, lists and tuples -> dicts and lists (what YAML and JSON write)."""
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied key by key, nested mappings merged, not replaced."""
    out = dict(base)
    for k, v in changes.items():
        if dataclasses.is_dataclass(v):
            v = to_plain(dataclasses.asdict(v))
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(hint: Any, value: Any, key: str, noun: str = "config key") -> Any:
    """Check `value` against a field's type hint; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{noun} '{key}' must be a list, got {value!r}")
        fixed_length = len(args) != 2 or args[1] is not Ellipsis
        if fixed_length and len(value) != len(args):
            raise ValueError(f"{noun} '{key}' needs {len(args)} values, got {len(value)}")
        return tuple(_coerce(args[0], v, key, noun) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported type for {key}: {hint}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{noun} '{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{noun} '{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{noun} '{key}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{noun} '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type for {key}: {hint}")
