"""Arrays <-> the service's wire format (docs/wire-format.md), without torch.

A request tensor is written as a nested list when it is tiny (non-finite values as the strings
``"NaN"``, ``"Infinity"``, ``"-Infinity"``), and as a base64 object ``{"shape", "dtype",
"base64"}`` otherwise; integer arrays always go as ``int64`` base64 objects, so that the service
reads them as integers (class indices) whatever their size. Response tensors come back as numpy
arrays.
"""

from __future__ import annotations

import base64
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Array: TypeAlias = npt.NDArray[Any]
TensorLike: TypeAlias = Any
"""What the client accepts as a tensor: a numpy array, a Python number or (nested) list, a torch
tensor, or anything else numpy can turn into a numeric array (``__array__``)."""

TINY = 16
"""Arrays of at most this many elements travel as nested JSON lists; larger ones as base64."""

FLOAT_DTYPES = ("float32", "float64")
_NON_FINITE_OUT = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class TensorShape:
    """What a dry run returns in place of a tensor: the tensor's shape and dtype."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def parse(cls, body: Any) -> TensorShape:
        return cls(tuple(int(n) for n in body["shape"]), str(body["dtype"]))


class Kind(Enum):
    """How a request field reads integers."""

    FLOAT = "float"
    """Always floating: integers are cast to the request's dtype (activation inputs, tangents...)."""
    INDEX = "index"
    """Loss targets: integer arrays and Python integers stay int64 (class indices)."""
    INPUT = "input"
    """Expression inputs: integer numpy arrays and tensors stay int64 (never differentiated);
    Python numbers and lists are floats."""


@dataclass(frozen=True)
class Prepared:
    """One request tensor as a numpy array, before the request's dtype is known."""

    array: Array
    weak: bool
    """A Python number or list, or integers made floats: no floating dtype of its own, so it does
    not choose the request's."""

    @property
    def integer(self) -> bool:
        return self.array.dtype.kind in "iub"


def prepare(value: TensorLike, kind: Kind, where: str) -> Prepared:
    """``value`` as a numpy array (torch tensors through ``.numpy()``, never importing torch)."""
    weak = isinstance(value, int | float | list | tuple) and not isinstance(value, np.generic)
    array = as_numpy(value, where)
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    if array.dtype.kind in "iu":
        if kind is Kind.FLOAT or (kind is Kind.INPUT and weak):
            return Prepared(array.astype(np.float64), weak=True)  # no floating dtype of its own
        array = array.astype(np.int64)
    elif array.dtype.kind != "f":
        raise TypeError(f"{where} must hold real numbers, not {array.dtype} values")
    return Prepared(array, weak)


def is_array(value: Any) -> bool:
    """Whether ``value`` is an array or a tensor (rather than a number or a list)."""
    if isinstance(value, np.ndarray):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return True
    return hasattr(value, "__array__") and not isinstance(value, np.generic)


def as_numpy(value: Any, where: str) -> Array:
    """``value`` as a numpy array: a torch tensor detached and on the CPU (floating ones other
    than float32 and float64 as float32), never importing torch."""
    if isinstance(value, np.ndarray):
        return value
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_complex():
            raise TypeError(f"{where} must hold real numbers, not {tensor.dtype} values")
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.to(torch.float32)  # bfloat16 has no numpy dtype
        array: Array = tensor.cpu().resolve_conj().resolve_neg().numpy()
        return array
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} is not a rectangular array of numbers: {exc}") from None


def choose_dtype(requested: str | None, tensors: Iterable[Prepared]) -> str:
    """The request's dtype: the one asked for; else float64 when any floating input that has a
    dtype of its own (an array, a tensor) is float64, else float32."""
    if requested is not None:
        if requested not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, not {requested!r}")
        return requested
    for tensor in tensors:
        if not tensor.weak and tensor.array.dtype == np.float64:
            return "float64"
    return "float32"


def to_wire(tensor: Prepared, dtype: str) -> Any:
    """The JSON value of one request tensor; floating arrays are cast to ``dtype`` first."""
    array = tensor.array
    if tensor.integer:
        return _encoded(array.astype("<i8", copy=False), "int64")
    with np.errstate(over="ignore"):  # past float32's range is infinity, as the service's own cast gives
        array = array.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    if array.size <= TINY:
        return _nested(array)
    return _encoded(array, dtype)


def _encoded(array: Array, dtype: str) -> dict[str, Any]:
    raw = np.ascontiguousarray(array).tobytes()
    return {"shape": list(array.shape), "dtype": dtype, "base64": base64.b64encode(raw).decode("ascii")}


def _nested(array: Array) -> Any:
    values = array.tolist()
    if np.isfinite(array).all():
        return values
    return _strings_for_non_finite(values)


def _strings_for_non_finite(value: Any) -> Any:
    if isinstance(value, list):
        return [_strings_for_non_finite(item) for item in value]
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


# --- responses ---------------------------------------------------------------------------------


def from_wire(value: Any, dtype: str) -> Array:
    """One response tensor as a numpy array: a base64 object in its own dtype, a number or a
    nested list (non-finite strings included) in ``dtype``."""
    if isinstance(value, Mapping):
        if "base64" not in value:
            raise ValueError(f"expected a tensor, got an object with the keys {sorted(value)}")
        wire_dtype = np.dtype(value["dtype"]).newbyteorder("<")
        raw = bytearray(base64.b64decode(value["base64"]))
        array: Array = np.frombuffer(raw, dtype=wire_dtype).reshape(value["shape"])
        return array.astype(array.dtype.newbyteorder("="), copy=False)
    return np.array(value, dtype=dtype)  # numpy reads "NaN", "Infinity" and "-Infinity" itself


def optional(value: Any, dtype: str) -> Array | None:
    return None if value is None else from_wire(value, dtype)


def number(value: Any) -> float:
    """A scalar the service writes as a number or a non-finite string."""
    if isinstance(value, str):
        return _NON_FINITE_OUT[value]
    return float(value)
