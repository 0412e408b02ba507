"""Request bodies parsed for the wire codec: small bodies by orjson into Python; large ones by
simdjson, with big numeric arrays left lazy (``LazyArray``) for ``codec.decode`` to copy
straight into a buffer without making a Python float per element."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

from service.errors import InvalidInput

MAX_RANK = 32
"""The deepest nesting (and the most dimensions) a wire tensor may have."""


@dataclass(frozen=True)
class LazyArray:
    """A big numeric array still inside simdjson's parsed document, with its checked shape."""

    array: simdjson.Array
    shape: tuple[int, ...]


LAZY_MIN_LENGTH = 64
SMALL_BODY_BYTES = 4096
"""Bodies up to this size are parsed by orjson straight into Python: no lazy arrays are worth it."""


def parse_json(body: bytes) -> Any:
    """Parse a request body; numeric arrays worth it stay lazy (LazyArray), the rest is Python.

    An array stays lazy when it nests arrays or holds at least LAZY_MIN_LENGTH numbers, and its
    rows have matching lengths. A final count of ``[`` in the raw body against the arrays seen
    proves no leaf position holds a nested array (``as_buffer`` would silently flatten it);
    when the count disagrees, every lazy array is turned into Python for the exact walker.
    Raises InvalidInput with orjson's description of the first syntax error.
    """
    # (A one-byte search first: it is memchr-fast, the two-byte one is ten times slower.)
    if len(body) <= SMALL_BODY_BYTES or (b"\\" in body and b"\\u" in body):
        # Small, or with \u escapes (a "\u005b" would fool the bracket count below): all Python.
        return _parse_exact(body)
    try:
        document = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError, UnicodeDecodeError):
        return _parse_exact(body)  # simdjson refuses some valid JSON (integers past 64 bits)
    counter = _BracketCounter()
    try:
        tree = _convert(document, counter)
        if counter.brackets != _count_open_brackets(body):
            tree = _materialise(tree)
    except _DuplicateKey:
        return _parse_exact(body)  # orjson keeps the last of duplicate keys; simdjson the first
    except RecursionError:
        raise InvalidInput("The body nests objects or arrays too deeply.", error_type="invalid_json") from None
    return tree


def _parse_exact(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as detail:
        raise InvalidInput(
            f"The body is not valid JSON: {detail}.", error_type="invalid_json", position=detail.pos
        ) from None


class _DuplicateKey(Exception):
    pass


def _count_open_brackets(body: bytes) -> int:
    # numpy's vectorised compare beats bytes.count by about 2x on multi-megabyte bodies.
    return int(np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == ord("[")))


@dataclass
class _BracketCounter:
    brackets: int = 0


def _convert(node: Any, counter: _BracketCounter) -> Any:
    if isinstance(node, simdjson.Object):
        result = {}
        for key in node:  # iterating an Object yields its keys
            if key in result:
                raise _DuplicateKey
            counter.brackets += key.count("[")
            result[key] = _convert(node[key], counter)
        return result
    if isinstance(node, simdjson.Array):
        length = len(node)
        first = node[0] if length else None
        if isinstance(first, simdjson.Array) or (length >= LAZY_MIN_LENGTH and _is_number(first)):
            shape = _lazy_shape(node)
            if shape is not None:
                counter.brackets += _brackets_of(shape)
                return LazyArray(node, shape)
            # Irregular: all of it goes to the exact walker, none of it lazy.
            exact = node.as_list()
            counter.brackets += _python_brackets(exact)
            return exact
        counter.brackets += 1
        return [_convert(node[index], counter) for index in range(length)]
    if isinstance(node, str):
        counter.brackets += node.count("[")
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _lazy_shape(array: simdjson.Array) -> tuple[int, ...] | None:
    """The shape of a nested lazy array whose rows all match the first, else None."""
    shape: list[int] = []
    probe: Any = array
    while isinstance(probe, simdjson.Array):
        shape.append(len(probe))
        if len(shape) > MAX_RANK:
            return None
        if not len(probe):
            break
        probe = probe[0]
    rows: list[Any] = [array]
    for size in shape[:-1]:
        children: list[Any] = []
        for row in rows:
            if not isinstance(row, simdjson.Array) or len(row) != size:
                return None
            children.extend(row[index] for index in range(size))
        rows = children
    if any(not isinstance(row, simdjson.Array) or len(row) != shape[-1] for row in rows):
        return None
    return tuple(shape)


def _python_brackets(value: Any) -> int:
    """How many ``[`` the JSON text of a converted value holds (arrays, keys and strings)."""
    if isinstance(value, list):
        return 1 + sum(_python_brackets(item) for item in value)
    if isinstance(value, dict):
        return sum(key.count("[") + _python_brackets(item) for key, item in value.items())
    return value.count("[") if isinstance(value, str) else 0


def _brackets_of(shape: tuple[int, ...]) -> int:
    """How many arrays a rectangular nested array of ``shape`` is made of."""
    total, rows = 0, 1
    for size in shape[:-1]:
        total += rows
        rows *= size
    return total + rows


def _materialise(node: Any) -> Any:
    if isinstance(node, LazyArray):
        return node.array.as_list()
    if isinstance(node, dict):
        return {key: _materialise(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_materialise(value) for value in node]
    return node
