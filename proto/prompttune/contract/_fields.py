"""What both codecs know about a contract type's fields, read once per class from its hints."""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The shape of a field's value, after `X | None` is unwrapped.
SCALAR, ENUM, RECORD, TUPLE, MAPPING, TIME = "scalar", "enum", "record", "tuple", "mapping", "time"


@dataclass(frozen=True)
class FieldShape:
    """One field: its ``kind`` (above), the Python type of its value (of each item for tuples
    and mappings), whether None is allowed, and its default (``dataclasses.MISSING`` if
    required)."""

    name: str
    kind: str
    type: type
    optional: bool
    default: Any

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


class ContractError(ValueError):
    """A value does not fit a contract type; `path` names the field, e.g. ``search.max_demos``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _shape(name: str, hint: Any, default: Any) -> FieldShape:
    inner, optional = _unwrap_optional(hint)
    origin = typing.get_origin(inner)
    if origin is tuple:
        item = typing.get_args(inner)[0]
        return FieldShape(name, TUPLE, item, optional, default)
    if origin in (Mapping, dict, typing.Mapping):
        item = typing.get_args(inner)[1]
        return FieldShape(name, MAPPING, item, optional, default)
    if inner is datetime:
        return FieldShape(name, TIME, inner, optional, default)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return FieldShape(name, ENUM, inner, optional, default)
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
        return FieldShape(name, RECORD, inner, optional, default)
    return FieldShape(name, SCALAR, inner, optional, default)


def shapes(cls: type) -> tuple[FieldShape, ...]:
    """The fields of contract dataclass `cls`, in declaration order."""
    return _shapes(cls)


@functools.cache
def _shapes(cls: type) -> tuple[FieldShape, ...]:
    hints = typing.get_type_hints(cls)
    result = []
    for field in dataclasses.fields(cls):
        default: Any = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        result.append(_shape(field.name, hints[field.name], default))
    return tuple(result)


def construct(cls: type, values: dict[str, Any], path: str) -> Any:
    """``cls(**values)``; a ValueError from its own checks names `path`."""
    try:
        return cls(**values)
    except ValueError as error:
        raise ContractError(path, str(error)) from error
