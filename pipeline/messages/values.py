"""Shared parts of the wire conversions: errors with paths, JSON limits, field checks."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

NS = "claude.pipeline."

#: How deep a JSON value may nest (a tool input, an input_schema, an unknown block).
MAX_JSON_DEPTH = 64


class WireError(ValueError):
    """A value the wire cannot carry, or a record that does not make a valid request.

    The message starts with the path of the offending key (``messages[1].content[0].input``).
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


# -- small checks -------------------------------------------------------------------


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def drop_nulls(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def json_depth(value: object, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a JSON value, without recursion (a hostile value cannot blow the stack)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def dump_json(value: object, path: str) -> str:
    """`value` as compact JSON; WireError if it is not JSON or nests too deeply."""
    if json_depth(value) > MAX_JSON_DEPTH:
        raise WireError(path, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WireError(path, f"not JSON-serializable ({exc})") from None


def load_json(text: str, path: str, *, want: type | None = dict) -> Any:
    """Parse a JSON string field of a record; WireError says what is wrong with it."""
    if len(text) > 2 * MAX_JSON_DEPTH and _bracket_depth(text) > MAX_JSON_DEPTH:
        raise WireError(path, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WireError(path, f"invalid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(text) and not _encodable(value):
        # json.loads joins escaped pairs; a lone half stays, and no UTF-8 body
        # (so no call to Claude) can carry it
        raise WireError(path, "invalid JSON (a lone UTF-16 surrogate escape, e.g. \\udfff)")
    if want is not None and not isinstance(value, want):
        raise WireError(path, f"must be a JSON {'object' if want is dict else want.__name__}")
    return value


#: A \\u escape of a UTF-16 surrogate (D800-DFFF): only those can leave a lone half.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bracket_depth(text: str) -> int:
    """An upper bound of a JSON text's nesting, checked before parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _wrong_type(value: object, kind: type | tuple[type, ...]) -> bool:
    # bool is an int to isinstance(), never to the API
    return not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)


def need(block: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    if key not in block or block[key] is None:
        raise WireError(join(path, key), "required")
    value = block[key]
    if _wrong_type(value, kind):
        raise WireError(join(path, key), f"must be {_kind_name(kind)}")
    return value


def maybe(block: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    value = block.get(key)
    if value is None:
        return None
    if _wrong_type(value, kind):
        raise WireError(join(path, key), f"must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "a boolean",
        dict: "an object",
        list: "a list",
    }
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def only(block: Mapping[str, Any], allowed: frozenset[str]) -> bool:
    return all(k in allowed for k in block)
