"""Contract types to and from plain documents (the JSON/YAML of task, result and export files).

`to_document` writes every field under its API name (enums by value, times in ISO 8601);
`from_document` reads it back strictly: unknown keys are refused with their key path and the
keys that would fit, wrong types name the key and what was expected, and missing required
fields are named. Reading `to_document(value)` gives `value` back unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from prompttune.contract._fields import (
    MAPPING,
    TIME,
    TUPLE,
    ContractError,
    FieldShape,
    construct,
    join,
    shapes,
)

T = TypeVar("T")
_PREVIEW = 40


def preview(value: Any) -> str:
    """A short, safe quotation of a user value for error messages."""
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 3] + "..."


def to_document(value: Any) -> Any:
    """A JSON-able rendering of a contract value; None fields are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        document = {}
        for shape in shapes(type(value)):
            item = getattr(value, shape.name)
            if item is not None:
                document[shape.name] = to_document(item)
        return document
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [to_document(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): to_document(item) for key, item in value.items()}
    return value


def from_document(cls: type[T], document: Any, path: str = "") -> T:
    """Reads `document` as a `cls`; raises `ContractError` naming the key path."""
    if not isinstance(document, Mapping):
        raise ContractError(path, f"expected a mapping, got {_type_name(document)}")
    known = {shape.name: shape for shape in shapes(cls)}
    for key in document:
        if key not in known:
            raise ContractError(join(path, str(key)), _unknown_key(str(key), known))
    values = {}
    for name, shape in known.items():
        if name in document:
            values[name] = _value(shape, document[name], join(path, name))
        elif shape.required:
            raise ContractError(join(path, name), "is required")
    return construct(cls, values, path)  # type: ignore[no-any-return]


def _unknown_key(key: str, known: Mapping[str, FieldShape]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; expected one of: {', '.join(known)}"


def _value(shape: FieldShape, value: Any, path: str) -> Any:
    if value is None:
        if shape.optional:
            return None
        raise ContractError(path, "must not be null")
    if shape.kind == TUPLE:
        if not isinstance(value, list | tuple):
            raise ContractError(path, f"expected a list, got {_type_name(value)}")
        return tuple(_item(shape, item, join(path, i)) for i, item in enumerate(value))
    if shape.kind == MAPPING:
        if not isinstance(value, Mapping):
            raise ContractError(path, f"expected a mapping, got {_type_name(value)}")
        return {
            _key(key, path): _item(shape, item, join(path, str(key))) for key, item in value.items()
        }
    return _item(shape, value, path)


def _key(key: Any, path: str) -> str:
    if not isinstance(key, str):
        raise ContractError(path, f"keys must be strings, got {_type_name(key)}")
    return key


def _item(shape: FieldShape, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(shape.type):
        return from_document(shape.type, value, path)
    if issubclass(shape.type, enum.Enum):
        return _enum(shape.type, value, path)
    if shape.kind == TIME:
        if not isinstance(value, str):
            raise ContractError(path, "expected an ISO 8601 time")
        try:
            return datetime.fromisoformat(value)
        except ValueError as error:
            raise ContractError(path, f"expected an ISO 8601 time, got {preview(value)}") from error
    return _scalar(shape.type, value, path)


def _enum(cls: type[enum.Enum], value: Any, path: str) -> enum.Enum:
    if isinstance(value, str):
        for member in cls:
            if value.strip().lower() in (str(member.value), member.name.lower()):
                return member
    allowed = ", ".join(str(member.value) for member in cls)
    raise ContractError(path, f"expected one of {allowed}; got {preview(value)}")


def _scalar(cls: type, value: Any, path: str) -> Any:
    if cls is bool:
        if isinstance(value, bool):
            return value
        raise ContractError(path, f"expected true or false, got {preview(value)}")
    if cls is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ContractError(path, f"expected an integer, got {preview(value)}")
    if cls is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ContractError(path, f"expected a number, got {preview(value)}")
    if cls is str:
        if isinstance(value, str):
            return value
        raise ContractError(path, f"expected a string, got {preview(value)}")
    raise TypeError(f"{path}: no document form for {cls!r}")


def _type_name(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {preview(value)}"
    return {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number"}.get(
        type(value), type(value).__name__
    )
