"""Avro writers compiled from a parsed schema: the worker's hot path, byte for byte
what fastavro writes.

fastavro's writer interprets the schema for every datum, and for each union it
validates the datum against the branches before writing it, so a response with
one content block cost 44 us to encode (the worker encodes two records a
request). `compile_writer` walks the schema once and returns closures that write
the common shapes directly (about a tenth of that). It writes only what it is
sure of: a union whose branch it cannot tell at a glance, a value of a type it
does not expect, an integer out of range, a missing field without a default
all raise `Unsure`, and the caller hands the whole record to fastavro, which
writes it or says why not in its own words. So every record either gets exactly
fastavro's bytes or fastavro's own error (`tests/unit/test_avrowriter.py`
compares the two on every schema).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

Write = Callable[[bytearray, Any], None]

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_NO_VALUE = object()


class Unsure(Exception):
    """The compiled writer will not decide this datum: let fastavro write it."""


def _varint(out: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _null(out: bytearray, value: Any) -> None:
    if value is not None:
        raise Unsure


def _boolean(out: bytearray, value: Any) -> None:
    if value is True:
        out.append(1)
    elif value is False:
        out.append(0)
    else:
        raise Unsure


def _int(out: bytearray, value: Any) -> None:
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise Unsure
    _varint(out, value)


def _long(out: bytearray, value: Any) -> None:
    if type(value) is not int or not _LONG_MIN <= value <= _LONG_MAX:
        raise Unsure
    _varint(out, value)


def _double(out: bytearray, value: Any) -> None:
    if type(value) is not float:
        raise Unsure
    out += struct.pack("<d", value)


def _float(out: bytearray, value: Any) -> None:
    if type(value) is not float:
        raise Unsure
    out += struct.pack("<f", value)


def _bytes(out: bytearray, value: Any) -> None:
    if type(value) is not bytes:
        raise Unsure
    _varint(out, len(value))
    out += value


def _string(out: bytearray, value: Any) -> None:
    if type(value) is not str:
        raise Unsure
    data = value.encode()
    _varint(out, len(data))
    out += data


_PRIMITIVE_WRITERS: dict[str, Write] = {
    "null": _null,
    "boolean": _boolean,
    "int": _int,
    "long": _long,
    "float": _float,
    "double": _double,
    "bytes": _bytes,
    "string": _string,
}


class _Compiler:
    """Compiles one parsed schema; named types are compiled once and may recurse."""

    def __init__(self) -> None:
        self._named: dict[str, Any] = {}
        self._writers: dict[str, Write] = {}

    def writer(self, schema: Any) -> Write:
        if isinstance(schema, str):
            if schema in _PRIMITIVE_WRITERS:
                return _PRIMITIVE_WRITERS[schema]
            return self._by_name(schema)
        if isinstance(schema, list):
            return self._union(schema)
        kind = schema["type"]
        if kind in ("record", "error", "enum", "fixed"):
            self._named[schema["name"]] = schema
            return self._by_name(schema["name"])
        if kind == "array":
            return self._array(self.writer(schema["items"]))
        if kind == "map":
            return self._map(self.writer(schema["values"]))
        if kind in _PRIMITIVE_WRITERS:
            return _PRIMITIVE_WRITERS[kind]  # logical types write their underlying type
        raise Unsure  # a type this compiler does not know: fastavro writes the schema

    def _by_name(self, name: str) -> Write:
        if name in self._writers:
            return self._writers[name]
        cell: list[Write] = []
        self._writers[name] = lambda out, value: cell[0](out, value)  # recursion
        schema = self._named[name]
        kind = schema["type"]
        if kind == "enum":
            compiled = self._enum(schema["symbols"])
        elif kind == "fixed":
            compiled = self._fixed(schema["size"])
        else:
            compiled = self._record(schema["fields"])
        cell.append(compiled)
        self._writers[name] = compiled
        return compiled

    def _record(self, fields: list[dict[str, Any]]) -> Write:
        plan = []
        for field in fields:
            kind = field["type"]
            nullable = kind == "null" or (isinstance(kind, list) and "null" in kind)
            default = field.get("default", None if nullable else _NO_VALUE)
            plan.append((field["name"], default, self.writer(kind), kind in ("float", "double")))

        def write(out: bytearray, value: Any) -> None:
            if type(value) is not dict and not isinstance(value, Mapping):
                raise Unsure
            if "-type" in value:
                raise Unsure  # fastavro's own way to name a record: its rules
            for name, default, write_field, numeric in plan:
                item = value.get(name, default)
                if item is _NO_VALUE:
                    raise Unsure
                if numeric and type(item) is int:
                    item = float(item)  # fastavro writes float(value) for these fields
                write_field(out, item)

        return write

    @staticmethod
    def _enum(symbols: list[str]) -> Write:
        index = {symbol: i for i, symbol in enumerate(symbols)}

        def write(out: bytearray, value: Any) -> None:
            position = index.get(value) if type(value) is str else None
            if position is None:
                raise Unsure
            _varint(out, position)

        return write

    @staticmethod
    def _fixed(size: int) -> Write:
        def write(out: bytearray, value: Any) -> None:
            if type(value) is not bytes or len(value) != size:
                raise Unsure
            out += value

        return write

    @staticmethod
    def _array(item: Write) -> Write:
        def write(out: bytearray, value: Any) -> None:
            if type(value) not in (list, tuple):
                raise Unsure
            if value:
                _varint(out, len(value))
                for element in value:
                    item(out, element)
            out.append(0)

        return write

    @staticmethod
    def _map(item: Write) -> Write:
        def write(out: bytearray, value: Any) -> None:
            if type(value) is not dict:
                raise Unsure
            if value:
                _varint(out, len(value))
                for key, element in value.items():
                    _string(out, key)
                    item(out, element)
            out.append(0)

        return write

    def _union(self, branches: list[Any]) -> Write:
        """Writes None to the null branch, a (name, value) tuple to the branch of
        that name, and any other value only when its Python type could be valid
        for one branch alone (fastavro would pick that branch, or fail)."""
        null = -1
        by_name: dict[str, tuple[int, Write]] = {}  # the record branches
        claims: dict[type, list[tuple[int, Write]]] = {}
        # a logical type's writer takes other values (a date from a string)
        logical = any(isinstance(b, dict) and "logicalType" in b for b in branches)
        for i, branch in enumerate(branches):
            if branch == "null":
                null = i
                continue
            name = branch if isinstance(branch, str) else branch.get("name", branch["type"])
            write_branch = self.writer(branch)
            kind = self._named[name]["type"] if name in self._named else name
            if kind in ("record", "error"):
                by_name[name] = (i, write_branch)
            for python_type in _CLAIMS.get(kind, ()):
                claims.setdefault(python_type, []).append((i, write_branch))
        by_type = {t: found[0] for t, found in claims.items() if len(found) == 1}
        if logical:
            by_name, by_type = {}, {}

        def write(out: bytearray, value: Any) -> None:
            if value is None and null >= 0:
                _varint(out, null)
                return
            if isinstance(value, tuple):  # fastavro's (branch name, value) notation
                if len(value) != 2:
                    raise Unsure
                chosen = by_name.get(value[0])
                if chosen is None:
                    raise Unsure
                _varint(out, chosen[0])
                chosen[1](out, value[1])
                return
            chosen = by_type.get(type(value))
            if chosen is None or (type(value) is dict and "-type" in value):
                raise Unsure  # ambiguous, or fastavro's own way to name a branch
            _varint(out, chosen[0])
            chosen[1](out, value)

        return write


#: For each kind of branch, every Python type fastavro's validation could accept
#: for it (a superset), so a type claimed by one branch of a union can only go there.
_CLAIMS: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "int": (int, bool),
    "long": (int, bool),
    "float": (float, int, bool),
    "double": (float, int, bool),
    "bytes": (bytes, bytearray),
    "fixed": (bytes, bytearray),
    "string": (str,),
    "enum": (str,),
    "array": (list, tuple, bytes, bytearray),  # any Sequence but str
    "map": (dict,),
    "record": (dict,),
    "error": (dict,),
}


def compile_writer(parsed_schema: Any) -> Callable[[Any], bytes] | None:
    """A function that encodes a datum of `parsed_schema` or raises `Unsure`;
    None when the schema holds a type this compiler does not write."""
    try:
        write = _Compiler().writer(parsed_schema)
    except (Unsure, KeyError, TypeError):
        return None

    def encode(datum: Any) -> bytes:
        out = bytearray()
        try:
            write(out, datum)
        except (
            TypeError,
            ValueError,
            KeyError,
            AttributeError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise Unsure from exc
        return bytes(out)

    return encode
