"""JSON encoding of the engine's frozen dataclasses, for records in the store and files.

Supports nested dataclasses, ``StrEnum``/``IntEnum`` members, tuples, lists, dicts with
string keys, ``bytes`` (as base64), ``Optional`` and the scalar types. Unknown keys in stored
JSON are ignored and missing keys take the field's default, so a record written by an older
schema still loads (new fields must have defaults).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import types
import typing
from functools import cache
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


def to_plain(value: Any) -> Any:
    """Turn a dataclass tree into JSON-ready plain values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def to_json(value: Any) -> str:
    """Compact, key-sorted JSON of a dataclass tree."""
    return json.dumps(to_plain(value), separators=(",", ":"), sort_keys=True)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_plain(tp: Any, value: Any) -> Any:
    """Rebuild a value of type ``tp`` from :func:`to_plain` output."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return from_plain(non_none[0], value)
        return value
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], v) for v in value)
        return tuple(from_plain(a, v) for a, v in zip(args, value, strict=True))
    if origin is list:
        (arg,) = get_args(tp)
        return [from_plain(arg, v) for v in value]
    if origin is dict or origin is typing.Mapping:
        _, varg = get_args(tp)
        return {k: from_plain(varg, v) for k, v in value.items()}
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            kwargs = {}
            for f in dataclasses.fields(tp):
                if f.name in value:
                    kwargs[f.name] = from_plain(hints[f.name], value[f.name])
            return tp(**kwargs)
        if issubclass(tp, enum.Enum):
            return tp(value)
        if tp is bytes:
            return base64.b64decode(value)
        if tp is float and isinstance(value, int):
            return float(value)
    return value


def from_json(cls: type[T], text: str | bytes) -> T:
    """Decode JSON made by :func:`to_json` into ``cls``."""
    result: T = from_plain(cls, json.loads(text))
    return result
