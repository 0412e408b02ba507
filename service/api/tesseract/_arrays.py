"""Tesseract's array encoding: ``{"object_type": "array", "shape", "dtype", "data": {"buffer",
"encoding"}}`` with the buffer inline as JSON numbers (``json``) or as the array's little-endian
bytes in base64 (``base64``), read into torch tensors and written back.

``binref`` (a buffer in a file on the server) is refused: it would let a request read any file
the server can, and this service shares no file system with its clients.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pybase64
import torch

from service.compute.wire import ElementBudget, LazyArray, decode
from service.errors import InvalidInput

OutputFormat = Literal["json", "json+base64"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("json", "json+base64")
"""The response encodings: JSON numbers, or base64 bytes (binref is never written)."""
Loc = tuple[str | int, ...]

INPUT_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)
"""The dtypes an array may be sent in: every one numpy casts to a float without changing its kind."""
ARRAY_KEYS = frozenset({"object_type", "shape", "dtype", "data"})
DATA_KEYS = frozenset({"buffer", "encoding", "compression"})
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Invalid(Exception):
    """The request does not fit the Tesseract's schema: a 422 whose ``detail`` lists each
    problem as pydantic does (``type``, ``loc``, ``msg``), which Tesseract's client raises as a
    ``pydantic.ValidationError``."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(problems[0]["msg"] if problems else "invalid request")
        self.problems = problems


class Problems:
    """The problems found so far in one request."""

    def __init__(self) -> None:
        self.found: list[dict[str, Any]] = []

    def add(self, loc: Loc, kind: str, msg: str) -> None:
        self.found.append({"type": kind, "loc": list(loc), "msg": msg})

    @contextmanager
    def at(self, loc: Loc) -> Iterator[None]:
        """Record an ``Invalid`` raised inside as problems, and go on."""
        try:
            yield
        except Invalid as exc:
            self.found.extend(exc.problems)

    def check(self) -> None:
        if self.found:
            raise Invalid(self.found)


def invalid(loc: Loc, kind: str, msg: str) -> Invalid:
    return Invalid([{"type": kind, "loc": list(loc), "msg": msg}])


def read_array(
    value: Any,
    loc: Loc,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    budget: ElementBudget,
) -> torch.Tensor:
    """An encoded array of exactly ``shape``, as a tensor of ``dtype`` on ``device``; its
    elements count against ``budget`` (413 past it)."""
    declared = _declared(value, loc, shape)
    data = value["data"]
    encoding = data["encoding"]
    if encoding == "base64":
        budget.take(math.prod(shape), ".".join(map(str, loc)))
        array = _from_base64(data["buffer"], declared, shape, (*loc, "data", "buffer"))
        tensor = torch.from_numpy(array.astype(np.dtype(str(dtype).removeprefix("torch."))))
    else:
        tensor = _from_json(data["buffer"], shape, (*loc, "data", "buffer"), dtype, budget)
    return tensor.to(device)


def read_shape_dtype(value: Any, loc: Loc, shape: tuple[int, ...]) -> None:
    """An abstract array, ``{"shape", "dtype"}``, checked against ``shape``."""
    if not isinstance(value, dict):
        raise invalid(loc, "model_type", "Input should be an object with the keys shape and dtype")
    problems = Problems()
    for key in sorted(set(value) - {"shape", "dtype"}):
        problems.add((*loc, key), "extra_forbidden", "Extra inputs are not permitted")
    with problems.at(loc):
        _check_shape(value.get("shape"), (*loc, "shape"), shape)
    with problems.at(loc):
        _check_dtype(value.get("dtype"), (*loc, "dtype"))
    problems.check()


def _declared(value: Any, loc: Loc, shape: tuple[int, ...]) -> str:
    """Check an encoded array's envelope; return its dtype."""
    if not isinstance(value, dict):
        raise invalid(loc, "model_type", "Input should be an encoded array: an object with shape, dtype and data")
    problems = Problems()
    for key in sorted(set(value) - ARRAY_KEYS):
        problems.add((*loc, key), "extra_forbidden", "Extra inputs are not permitted")
    if value.get("object_type", "array") != "array":
        problems.add((*loc, "object_type"), "literal_error", "Input should be 'array'")
    with problems.at(loc):
        _check_shape(value.get("shape"), (*loc, "shape"), shape)
    with problems.at(loc):
        _check_dtype(value.get("dtype"), (*loc, "dtype"))
    with problems.at(loc):
        _check_data(value.get("data"), (*loc, "data"))
    problems.check()
    return str(value["dtype"])


def _check_shape(shape: Any, loc: Loc, expected: tuple[int, ...]) -> None:
    if shape is None:
        raise invalid(loc, "missing", "Field required")
    if not isinstance(shape, list) or not all(type(n) is int for n in shape):
        raise invalid(loc, "tuple_type", "Input should be a list of integers")
    if tuple(shape) != expected:
        raise invalid(
            loc, "array_shape_mismatch", f"Array shape {tuple(shape)} does not match the declared shape {expected}"
        )


def _check_dtype(dtype: Any, loc: Loc) -> None:
    if dtype is None:
        raise invalid(loc, "missing", "Field required")
    if dtype not in INPUT_DTYPES:
        raise invalid(loc, "literal_error", f"Input should be one of: {', '.join(INPUT_DTYPES)}")


def _check_data(data: Any, loc: Loc) -> None:
    if data is None:
        raise invalid(loc, "missing", "Field required")
    if not isinstance(data, dict) or "buffer" not in data or "encoding" not in data:
        raise invalid(loc, "model_type", "Input should be an object with the keys buffer and encoding")
    problems = Problems()
    for key in sorted(set(data) - DATA_KEYS):
        problems.add((*loc, key), "extra_forbidden", "Extra inputs are not permitted")
    encoding = data["encoding"]
    if encoding == "binref":
        problems.add(
            (*loc, "encoding"),
            "encoding_not_supported",
            "binref buffers are files on the server, which this service does not read; send json or base64",
        )
    elif encoding not in ("json", "base64"):
        problems.add((*loc, "encoding"), "literal_error", "Input should be 'base64' or 'json'")
    if data.get("compression") is not None:
        problems.add((*loc, "compression"), "literal_error", "Input should be None: no compression is supported")
    if encoding == "base64" and not isinstance(data["buffer"], str):
        problems.add((*loc, "buffer"), "string_type", "Input should be a valid string")
    problems.check()


def _from_base64(buffer: str, dtype: str, shape: tuple[int, ...], loc: Loc) -> np.ndarray[Any, Any]:
    try:
        raw = pybase64.b64decode(buffer, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(loc, "array_decode_error", "The buffer is not valid base64") from None
    # Little-endian, as Tesseract's client writes it.
    kind = np.dtype(dtype).newbyteorder("<")
    expected = math.prod(shape) * kind.itemsize
    if len(raw) != expected:
        raise invalid(
            loc,
            "array_decode_error",
            f"The buffer holds {len(raw)} bytes, but shape {shape} in {dtype} takes {expected}",
        )
    return np.frombuffer(raw, dtype=kind).reshape(shape)


def _from_json(
    buffer: Any, shape: tuple[int, ...], loc: Loc, dtype: torch.dtype, budget: ElementBudget
) -> torch.Tensor:
    """Numbers, nested or flat, in the order of ``shape`` (the service's own codec reads them)."""
    if not isinstance(buffer, list | LazyArray | int | float) or isinstance(buffer, bool):
        raise invalid(loc, "array_decode_error", "A json buffer is a number or an array of numbers")
    where = ".".join(map(str, loc))
    try:
        tensor = decode(buffer, where=where, dtype=dtype, device=torch.device("cpu"), budget=budget)
    except InvalidInput as exc:
        raise invalid(loc, "array_decode_error", exc.message) from None
    if tensor.numel() != math.prod(shape):
        raise invalid(
            loc,
            "array_shape_mismatch",
            f"The buffer holds {tensor.numel()} numbers, but shape {shape} takes {math.prod(shape)}",
        )
    return tensor.reshape(shape)


def write_array(tensor: torch.Tensor, output_format: OutputFormat) -> dict[str, Any]:
    """A tensor as an encoded array: base64 bytes, or JSON numbers (non-finite ones as null, as
    Tesseract's own runtime writes them)."""
    array = tensor.detach().cpu().contiguous().numpy()
    data: dict[str, Any]
    if output_format == "json+base64":
        data = {"buffer": pybase64.b64encode_as_string(array.tobytes()), "encoding": "base64"}
    else:
        data = {"buffer": array if array.ndim else array[()], "encoding": "json"}
    return {"object_type": "array", "shape": list(array.shape), "dtype": array.dtype.name, "data": data}
