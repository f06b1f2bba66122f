"""Bounds on what a user can type or send: ids, JSON documents, names.

Each rule lives here once, so that every command and every request file applies the same
one and refuses with one :class:`BadInput` line instead of a traceback deep in SQLite, the
JSON parser or the terminal.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from forgetctl.core.errors import BadInput

MAX_ID = 2**63 - 1
"""SQLite's INTEGER range: a larger id raises OverflowError in the driver."""


MAX_JSON_DEPTH = 32
"""A request is four levels deep; CPython's parser recurses and dies at ~1,000."""


MAX_JSON_INT_DIGITS = 18
"""No field takes a number beyond 64 bits; Python refuses over 4,300 digits with ValueError."""


_ID = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() accepts '²', which int() refuses


def parse_id(text: str, what: str = "id") -> int:
    """A row id as typed: a whole number from 0 to :data:`MAX_ID`."""
    value = str(text).strip()
    if _ID.fullmatch(value) and int(value) <= MAX_ID:
        return int(value)
    raise BadInput(f"{what} must be a whole number from 0 to {MAX_ID}, got {_shown(value)}")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise BadInput(f"a number of {len(digits)} digits (at most {MAX_JSON_INT_DIGITS})")
    return int(digits)


def _no_constant(name: str) -> Any:
    raise BadInput(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (the point is not to recurse)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def loads_json(text: str, where: str) -> Any:
    """Parse one JSON document with bounded nesting and number size; one line on error."""
    try:
        data = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise BadInput(f"{where}: JSON nested too deeply (at most {MAX_JSON_DEPTH})") from None
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise BadInput(f"{where}: JSON nested too deeply (at most {MAX_JSON_DEPTH})")
    return data


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages ("null", not "NoneType")."""
    for kind, name in ((bool, "a boolean"), (dict, "an object"), (list, "an array"),
                       (str, "a string"), (int | float, "a number")):  # fmt: skip
        if isinstance(value, kind):
            return name
    return "null"


def check_name(value: str, what: str = "name") -> str:
    """A person's name: whitespace squashed, no control characters, and at least one letter
    once NFKC-normalised (a name of zero-width, BOM, combining or bidi characters only
    would be an invisible subject, matched by nothing the plan generates)."""
    value = " ".join(value.split())
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{what} contains control characters")
    normal = unicodedata.normalize("NFKC", value)
    if not any(unicodedata.category(c).startswith("L") for c in normal):
        raise ValueError(f"{what} has no letter (empty, or only invisible or combining marks)")
    return value
