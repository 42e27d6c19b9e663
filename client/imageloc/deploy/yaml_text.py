"""Writes plain data (dicts, lists, strings, numbers, booleans) as block-style YAML text.

Standard library only: the generated Envoy config needs no YAML library, and the same data
always gives the same text, so a committed rendering can be compared byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

#: Data this module writes: what JSON can hold, with mappings kept in their given order.
Data = Mapping[str, "Data"] | Sequence["Data"] | str | int | float | bool | None

#: Strings written without quotes ("1s", "127.0.0.1:9901"), unless YAML would read them
#: as something else: a number (YAML 1.1's too: "1_0", "0x1f", "1:30"), a boolean, null.
_PLAIN = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_./:-]*")
_NUMBER = re.compile(r"[-+]?(0[xob][0-9a-f_]+|[0-9_.:]+(e[-+]?[0-9]+)?)")
_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"})


def dump(data: Mapping[str, Data], *, header: str = "") -> str:
    """data as YAML, each line of header first as a comment."""
    comments = [f"# {line}".rstrip() for line in header.splitlines()]
    return "\n".join([*comments, *_block(data, 0)]) + "\n"


def _block(data: Data, indent: int) -> list[str]:
    """The lines of a mapping or a sequence, indented by indent spaces."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            if _is_collection(value) and value:
                lines.append(f"{pad}{_scalar(key)}:")
                lines.extend(_block(value, indent + (0 if _is_sequence(value) else 2)))
            else:
                lines.append(f"{pad}{_scalar(key)}: {_inline(value)}")
        return lines
    assert _is_sequence(data), data
    for item in data:  # type: ignore[union-attr]
        if _is_collection(item) and item:
            nested = _block(item, indent + 2)
            lines.append(f"{pad}- {nested[0].lstrip()}")
            lines.extend(nested[1:])
        else:
            lines.append(f"{pad}- {_inline(item)}")
    return lines


def _inline(value: Data) -> str:
    """A scalar, or an empty mapping or sequence, on one line."""
    if isinstance(value, Mapping):
        return "{}"
    if _is_sequence(value):
        return "[]"
    return _scalar(value)


def _scalar(value: Data) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    assert isinstance(value, str), value
    lower = value.lower()
    if _PLAIN.fullmatch(value) and not _NUMBER.fullmatch(lower) and lower not in _WORDS:
        return value
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


def _is_sequence(value: Data) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _is_collection(value: Data) -> bool:
    return isinstance(value, Mapping) or _is_sequence(value)
