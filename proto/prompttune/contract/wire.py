"""The one codec between contract types and prompttune.v1 protobuf messages, both directions.

Fields map by name. A contract type maps to the message of the same name (`Evaluation` and
`JobPage` to the RPC replies that carry them); a test checks that every proto field has its
contract field. Zero values the wire cannot tell from "unset" decode to the contract's
default; proto3 ``optional`` fields and sub-messages keep presence (unset decodes to the
default or None). Decoding checks enum values and raises `ContractError` naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from datetime import UTC
from typing import Any, TypeVar

from google.protobuf.message import Message

from prompttune.contract import _types as t
from prompttune.contract._fields import (
    ENUM,
    MAPPING,
    RECORD,
    TIME,
    TUPLE,
    ContractError,
    FieldShape,
    construct,
    join,
    shapes,
)
from prompttune.v1 import optimizer_pb2 as pb

T = TypeVar("T")

_MESSAGE_NAMES = {
    t.Evaluation: "EvaluatePromptResponse",
    t.JobPage: "ListJobsResponse",
    t.Comparison: "ComparePromptsResponse",
}


def message_class(cls: type) -> type[Message]:
    """The protobuf message class contract type `cls` maps to."""
    return getattr(pb, _MESSAGE_NAMES.get(cls, cls.__name__))  # type: ignore[no-any-return]


@functools.cache
def _enum_prefix(cls: type[enum.Enum]) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper() + "_"


def to_message(value: Any) -> Any:
    """The protobuf message for contract value `value`."""
    message = message_class(type(value))()
    fill(message, value)
    return message


def fill(message: Message, value: Any) -> None:
    """Writes contract value `value` into `message` (a message of the matching type)."""
    for shape in shapes(type(value)):
        item = getattr(value, shape.name)
        if item is None:
            continue
        field = message.DESCRIPTOR.fields_by_name[shape.name]
        if shape.kind == TUPLE:
            _extend(getattr(message, shape.name), shape, item)
        elif shape.kind == MAPPING:
            _update(getattr(message, shape.name), shape, item)
        elif shape.kind == RECORD:
            fill(getattr(message, shape.name), item)
            getattr(message, shape.name).SetInParent()
        elif shape.kind == TIME:
            getattr(message, shape.name).FromDatetime(item)
        elif shape.kind == ENUM:
            setattr(message, shape.name, _enum_number(field, item))
        else:
            setattr(message, shape.name, item)


def _enum_number(field: Any, member: enum.Enum) -> int:
    return int(field.enum_type.values_by_name[_enum_prefix(type(member)) + member.name].number)


def _extend(container: Any, shape: FieldShape, items: tuple[Any, ...]) -> None:
    if shape.kind == TUPLE and dataclasses.is_dataclass(shape.type):
        for item in items:
            fill(container.add(), item)
    else:
        container.extend(items)


def _update(container: Any, shape: FieldShape, items: Any) -> None:
    for key, item in items.items():
        if dataclasses.is_dataclass(shape.type):
            fill(container[key], item)
        else:
            container[key] = item


def from_message(cls: type[T], message: Any, path: str = "") -> T:
    """The contract value of type `cls` in `message`; raises `ContractError` naming the field
    for values the contract does not know (an unknown enum number)."""
    descriptor = message.DESCRIPTOR
    values = {}
    for shape in shapes(cls):
        field = descriptor.fields_by_name[shape.name]
        value = _field_value(shape, field, message, join(path, shape.name))
        if value is not dataclasses.MISSING:
            values[shape.name] = value
    return construct(cls, values, path)  # type: ignore[no-any-return]


def _field_value(shape: FieldShape, field: Any, message: Any, path: str) -> Any:
    raw = getattr(message, shape.name)
    if shape.kind == TUPLE:
        items = tuple(_item(shape, field, item, join(path, i)) for i, item in enumerate(raw))
        return items or (() if shape.required else shape.default)
    if shape.kind == MAPPING:
        return {key: _item(shape, field, item, join(path, key)) for key, item in raw.items()}
    if field.has_presence and not message.HasField(shape.name) and not shape.required:
        return None if shape.optional else shape.default
    value = _item(shape, field, raw, path)
    if shape.kind in (RECORD, TIME):
        return value
    # Proto3 cannot tell a zero from "unset": zero takes the contract's default.
    if not raw and not field.has_presence and not shape.required:
        return shape.default
    return value


def _item(shape: FieldShape, field: Any, raw: Any, path: str) -> Any:
    if shape.kind == RECORD or (
        shape.kind in (TUPLE, MAPPING) and dataclasses.is_dataclass(shape.type)
    ):
        return from_message(shape.type, raw, path)
    if shape.kind == TIME:
        return raw.ToDatetime(tzinfo=UTC)
    if shape.kind == ENUM:
        return _enum_member(shape.type, field, raw, path)
    return raw


def _enum_member(cls: type[enum.Enum], field: Any, number: int, path: str) -> Any:
    value = field.enum_type.values_by_number.get(number)
    prefix = _enum_prefix(cls)
    name = value.name[len(prefix) :] if value is not None else ""
    if name in cls.__members__:
        return cls.__members__[name]
    if number == 0:
        return dataclasses.MISSING
    if "UNSPECIFIED" in cls.__members__:
        return cls.__members__["UNSPECIFIED"]
    raise ContractError(path, f"unknown value {number}")
