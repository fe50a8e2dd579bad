"""Protobuf text format written from plain Python values: Triton reads `config.pbtxt` in it.

A dict is a message, a list of dicts a repeated message, a list of scalars a repeated scalar,
`Enum("KIND_GPU")` an enum value written bare; strings are quoted, booleans are `true`/`false`.
Maps are repeated `{key, value}` messages, as the text format spells them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Enum:
    """A protobuf enum value, written without quotes."""

    name: str


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"no text-format spelling for {type(value).__name__}")


def _field(name: str, value: Any, indent: str) -> list[str]:
    inner = indent + "  "
    if isinstance(value, Mapping):
        return [f"{indent}{name} {{", *_message(value, inner), f"{indent}}}"]
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        lines = [f"{indent}{name} ["]
        for index, item in enumerate(value):
            comma = "," if index < len(value) - 1 else ""
            lines += [f"{inner}{{", *_message(item, inner + "  "), f"{inner}}}{comma}"]
        return [*lines, f"{indent}]"]
    if isinstance(value, list):
        return [f"{indent}{name}: [ {', '.join(_scalar(v) for v in value)} ]"]
    return [f"{indent}{name}: {_scalar(value)}"]


def _message(fields: Mapping[str, Any], indent: str) -> list[str]:
    lines: list[str] = []
    for name, value in fields.items():
        if value is None or (isinstance(value, list | dict) and not value):
            continue
        lines += _field(name, value, indent)
    return lines


def to_pbtxt(fields: Mapping[str, Any]) -> str:
    """The text-format spelling of one top-level message; empty fields are left out."""
    return "\n".join(_message(fields, "")) + "\n"
