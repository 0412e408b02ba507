"""Tensors on the wire <-> torch tensors.

A wire tensor is a JSON number, a rectangular nested array of numbers (non-finite values as
the strings "NaN", "Infinity", "-Infinity"), or an encoded object
``{"shape": [...], "dtype": "float32" | "float64" | "int64", "base64": "..."}`` holding the
little-endian, row-major bytes.

Large arrays arrive as lazy ``simdjson.Array`` objects (see ``parsing``) and are copied straight
into a buffer without making a Python float per element; anything the fast path doubts goes
through the exact walker, which names the offending position.
"""

from __future__ import annotations

import binascii
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import pybase64
import torch

from service.compute.wire.parsing import MAX_RANK, LazyArray
from service.errors import InvalidInput, LimitExceeded

WIRE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in WIRE_DTYPES.items()}
FLOAT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
NON_FINITE_IN: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
MAX_EXTENT = 2**40
"""Cap on the product of a shape's non-zero dimensions (an empty tensor of shape [0, 2**62] is
otherwise valid, and nothing can encode or differentiate it)."""
ENCODED_KEYS = frozenset({"shape", "dtype", "base64"})

Kind = Literal["float", "index"]
Encoding = Literal["json", "base64"]

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("the base64 tensor encoding assumes a little-endian host")


@dataclass
class ElementBudget:
    """Counts the elements of every tensor in one request against the configured cap."""

    limit: int
    used: int = field(default=0)

    def take(self, count: int, where: str) -> None:
        self.used += count
        if self.used > self.limit:
            raise LimitExceeded(
                f"The tensors of this request hold more than {self.limit} elements (reached at '{where}').",
                error_type="too_many_elements",
                limit=self.limit,
                where=where,
            )


NUMPY_DTYPES: dict[torch.dtype, type[np.floating[Any]]] = {torch.float32: np.float32, torch.float64: np.float64}
_PLAIN_NUMBERS = (float, int)
_PLAIN_NUMBER_TYPES = frozenset(_PLAIN_NUMBERS)  # exact types: bool is a subclass of int and is refused


def decode(
    value: Any,
    *,
    where: str,
    dtype: torch.dtype,
    device: torch.device,
    budget: ElementBudget,
    kind: Kind = "float",
) -> torch.Tensor:
    """Turn one wire tensor into a torch tensor of ``dtype`` on ``device``.

    ``kind="index"`` asks for integer class indices (int64, whatever ``dtype`` says).
    Raises InvalidInput naming ``where`` (and the position inside) for anything malformed.
    """
    if kind == "float" and dtype in NUMPY_DTYPES and _is_flat_number_list(value):
        # The common small case: numpy casts float64 to float32 as torch would, for less overhead.
        budget.take(len(value), where)
        flat = torch.from_numpy(_flat_array(value, NUMPY_DTYPES[dtype]))
        return flat if device.type == "cpu" else flat.to(device)
    if isinstance(value, dict):
        tensor = _decode_encoded(value, where, kind)
    elif isinstance(value, LazyArray):
        tensor = _decode_lazy(value, where, kind)
    else:
        tensor = _decode_nested(value, where, kind)
    budget.take(tensor.numel(), where)
    target = torch.int64 if kind == "index" else dtype
    return tensor.to(device=device, dtype=target)


def _decode_encoded(value: dict[str, Any], where: str, kind: Kind) -> torch.Tensor:
    if set(value) != ENCODED_KEYS:
        raise InvalidInput(
            f"'{where}' must be a number, a nested array, or an object with exactly the keys "
            f"shape, dtype and base64 (got {sorted(value)}).",
            error_type="invalid_tensor",
            where=where,
        )
    shape, dtype_name, payload = value["shape"], value["dtype"], value["base64"]
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise InvalidInput(
            f"'{where}.shape' must be a list of at most {MAX_RANK} non-negative integers.",
            error_type="invalid_tensor",
            where=f"{where}.shape",
        )
    if not isinstance(dtype_name, str) or dtype_name not in WIRE_DTYPES:
        raise InvalidInput(
            f"'{where}.dtype' must be one of {sorted(WIRE_DTYPES)} (got {dtype_name!r}).",
            error_type="invalid_tensor",
            where=f"{where}.dtype",
        )
    if not isinstance(payload, str):
        raise InvalidInput(
            f"'{where}.base64' must be a string.",
            error_type="invalid_tensor",
            where=f"{where}.base64",
        )
    try:
        raw = pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(
            f"'{where}.base64' is not valid base64: {exc}.",
            error_type="invalid_base64",
            where=f"{where}.base64",
        ) from exc
    if math.prod(n for n in shape if n) > MAX_EXTENT:
        raise InvalidInput(
            f"'{where}.shape' {shape} is too large, even with no elements.",
            error_type="invalid_tensor",
            where=f"{where}.shape",
        )
    wire_dtype = WIRE_DTYPES[dtype_name]
    count = math.prod(shape)
    expected = count * wire_dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"'{where}.base64' holds {len(raw)} bytes, but shape {shape} of {dtype_name} needs {expected}.",
            error_type="invalid_base64",
            where=f"{where}.base64",
        )
    if kind == "index" and wire_dtype != torch.int64:
        raise InvalidInput(
            f"'{where}' must hold integer class indices (dtype int64), not {dtype_name}.",
            error_type="invalid_dtype",
            where=where,
        )
    if count == 0:
        return torch.empty(shape, dtype=wire_dtype)
    return torch.frombuffer(bytearray(raw), dtype=wire_dtype).reshape(shape)


def _decode_lazy(lazy: LazyArray, where: str, kind: Kind) -> torch.Tensor:
    """Fast path for big arrays: copy the numbers out of simdjson's tape in one call."""
    try:
        buffer = lazy.array.as_buffer(of_type="i" if kind == "index" else "d")
    except (TypeError, ValueError):
        buffer = None  # a string, bool, null or out-of-range number: let the walker say where
    count = math.prod(lazy.shape)
    if count == 0:
        return torch.empty(lazy.shape, dtype=torch.int64 if kind == "index" else torch.float64)
    if buffer is not None and memoryview(buffer).nbytes == 8 * count:
        flat = torch.frombuffer(buffer, dtype=torch.int64 if kind == "index" else torch.float64)
        return flat.reshape(lazy.shape)
    return _decode_nested(lazy.array.as_list(), where, kind)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _flat_array(values: list[float | int], dtype: type[np.floating[Any]]) -> np.ndarray[Any, Any]:
    """A flat list of numbers as a numpy array of ``dtype``, each number rounded once, as torch
    rounds. Past float32's range is infinity, as torch's cast gives; only then does numpy need
    telling not to warn, which costs a small request more than the conversion itself."""
    if dtype is np.float32 and values and not -FLOAT32_MAX <= min(values) <= max(values) <= FLOAT32_MAX:
        with np.errstate(over="ignore"):
            return np.array(values, dtype=np.float64).astype(np.float32)
    return np.array(values, dtype=dtype)


def _is_flat_number_list(value: Any) -> bool:
    return type(value) is list and set(map(type, value)) <= _PLAIN_NUMBER_TYPES


def _decode_nested(value: Any, where: str, kind: Kind) -> torch.Tensor:
    """The exact path: checks every element and names the first bad one."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list | LazyArray):
        if isinstance(probe, LazyArray):  # a lazy row inside an irregular list: its shape is known
            shape.extend(probe.shape)
            break
        shape.append(len(probe))
        if len(shape) > MAX_RANK:
            raise InvalidInput(
                f"'{where}' is nested deeper than {MAX_RANK} levels.",
                error_type="invalid_tensor",
                where=where,
            )
        if not probe:
            break
        probe = probe[0]
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"'{where}' is nested deeper than {MAX_RANK} levels.", error_type="invalid_tensor", where=where
        )
    flat: list[float | int] = []
    _flatten(value, shape, 0, where, kind, flat)
    array = np.array(flat, dtype=np.int64 if kind == "index" else np.float64)  # faster than torch.tensor(list)
    return torch.from_numpy(array).reshape(shape)


def _flatten(value: Any, shape: list[int], depth: int, where: str, kind: Kind, out: list[float | int]) -> None:
    if isinstance(value, LazyArray):
        value = value.array.as_list()
    if depth == len(shape):
        out.append(_scalar(value, where, kind))
        return
    if not isinstance(value, list):
        raise InvalidInput(
            f"'{where}' should be an array of length {shape[depth]} like its siblings, "
            f"but is {_describe(value)}: the array is ragged.",
            error_type="ragged_array",
            where=where,
        )
    if len(value) != shape[depth]:
        raise InvalidInput(
            f"'{where}' has length {len(value)} but its siblings have length {shape[depth]}: the array is ragged.",
            error_type="ragged_array",
            where=where,
        )
    for index, item in enumerate(value):
        _flatten(item, shape, depth + 1, f"{where}[{index}]", kind, out)


def _scalar(value: Any, where: str, kind: Kind) -> float | int:
    if isinstance(value, bool) or value is None:
        pass
    elif kind == "index":
        if isinstance(value, int):
            if -(2**63) <= value < 2**63:
                return value
        else:
            raise InvalidInput(
                f"'{where}' must be an integer class index, not {_describe(value)}.",
                error_type="invalid_dtype",
                where=where,
            )
    elif isinstance(value, int | float):
        return float(value)
    elif isinstance(value, str) and value in NON_FINITE_IN:
        return NON_FINITE_IN[value]
    elif isinstance(value, list):
        raise InvalidInput(
            f"'{where}' is an array where its siblings are numbers: the array is ragged.",
            error_type="ragged_array",
            where=where,
        )
    raise InvalidInput(
        f'\'{where}\' must be a number (or "NaN", "Infinity", "-Infinity"), not {_describe(value)}.',
        error_type="not_a_number",
        where=where,
    )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return repr(value)[:40]


def encode(tensor: torch.Tensor, encoding: Encoding) -> Any:
    """A tensor as something orjson writes as strict JSON (numpy arrays allowed).

    float32 and float64 keep their dtype; booleans and other integers become int64.
    """
    if tensor.requires_grad:
        tensor = tensor.detach()
    if not tensor.is_cpu:
        tensor = tensor.cpu()
    if tensor.dtype not in DTYPE_NAMES:
        tensor = tensor.to(torch.float64 if tensor.is_floating_point() else torch.int64)
    if encoding == "json" and tensor.dim() == 1 and tensor.shape[0] <= SMALL_RESULT:
        return _small_vector(tensor)
    if math.prod(n for n in tensor.shape if n) > MAX_EXTENT:
        raise LimitExceeded(
            f"A result of shape {list(tensor.shape)} is too large to encode.", error_type="result_too_large"
        )
    if encoding == "base64":
        return {
            "shape": list(tensor.shape),
            "dtype": DTYPE_NAMES[tensor.dtype],
            "base64": pybase64.b64encode_as_string(tensor.contiguous().numpy().tobytes()),
        }
    array = tensor.contiguous().numpy()
    if tensor.is_floating_point() and not _all_finite(array):
        return _with_non_finite_strings(tensor)
    return array[()] if tensor.dim() == 0 else array  # 0-d: a numpy scalar, in its own precision


SMALL_RESULT = 64
"""Vectors up to this length take ``_small_vector``: below numpy's per-call overheads."""


def _small_vector(tensor: torch.Tensor) -> Any:
    array = tensor.contiguous().numpy()
    if array.dtype.kind == "f" and not all(map(math.isfinite, array.tolist())):
        return _with_non_finite_strings(tensor)
    return array


def _all_finite(array: np.ndarray[Any, Any]) -> bool:
    if array.size <= SMALL_RESULT:  # below numpy's per-call overhead
        return all(map(math.isfinite, array.ravel().tolist()))
    return bool(np.isfinite(array).all())


def _with_non_finite_strings(tensor: torch.Tensor) -> Any:
    """Nested lists with "NaN"/"Infinity"/"-Infinity" in place, finite values written as orjson
    writes them for the tensor's own dtype (shortest float32 repr for float32)."""
    values = tensor.numpy().ravel()
    flat: list[Any] = orjson.loads(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
    for index in np.flatnonzero(~np.isfinite(values)).tolist():
        value = float(values[index])
        flat[index] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if tensor.dim() == 0:
        return flat[0]
    return np.array(flat, dtype=object).reshape(tensor.shape).tolist()


def scalar_to_wire(value: float) -> float | str:
    """A Python float for a response, with non-finite values as their contract strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value
