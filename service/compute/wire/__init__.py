"""Tensors on the wire: request bodies parsed (``parsing``) and wire tensors decoded into torch
tensors and encoded back (``codec``)."""

from service.compute.wire.codec import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    WIRE_DTYPES,
    ElementBudget,
    Encoding,
    Kind,
    decode,
    encode,
    scalar_to_wire,
)
from service.compute.wire.parsing import MAX_RANK, SMALL_BODY_BYTES, LazyArray, parse_json

__all__ = [
    "DTYPE_NAMES",
    "FLOAT_DTYPES",
    "MAX_RANK",
    "SMALL_BODY_BYTES",
    "WIRE_DTYPES",
    "ElementBudget",
    "Encoding",
    "Kind",
    "LazyArray",
    "decode",
    "encode",
    "parse_json",
    "scalar_to_wire",
]
