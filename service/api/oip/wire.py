"""The Open Inference Protocol's wire: the request body (a JSON header, then the binary tensors of
the binary tensor data extension), its tensors decoded by datatype, and the response written as
JSON or binary.

Binary tensors are little-endian and row-major, without padding; the JSON header's length is the
``Inference-Header-Content-Length`` header (absent: the whole body is JSON). JSON tensors are
flat in row-major order or nested; non-finite values may be JSON's usual strings ("NaN",
"Infinity", "-Infinity") or the bare literals some clients write. A compressed body (gzip or
deflate, as tritonclient sends) is inflated up to the body limit.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from service.api.errors import request_validation_error
from service.api.oip.schemas import InferenceRequest, RequestInput
from service.api.responses import dump_json
from service.compute.wire import ElementBudget, decode, encode, parse_json
from service.compute.wire.codec import MAX_EXTENT
from service.errors import InvalidInput, LimitExceeded, UnsupportedMediaType

DATATYPES: dict[str, torch.dtype] = {
    "FP32": torch.float32,
    "FP64": torch.float64,
    "INT64": torch.int64,
    "INT32": torch.int32,
}
DATATYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DATATYPES.items()}
FLOAT_DATATYPES = frozenset({"FP32", "FP64"})
HEADER_LENGTH = b"inference-header-content-length"
INFLATE_WBITS = {b"gzip": 31, b"deflate": 15, b"x-gzip": 31}
"""zlib's window bits for each Content-Encoding (deflate is the zlib format, as HTTP means it)."""
INT32_RANGE = (-(2**31), 2**31 - 1)
CPU = torch.device("cpu")


@dataclass(frozen=True)
class InferBody:
    """A request read: its JSON header, validated, and the binary data after it."""

    request: InferenceRequest
    binary: memoryview


def inflate(raw: bytes, content_encoding: bytes | None, limit: int) -> bytes:
    """The body as sent before compression: at most ``limit`` bytes (413 beyond)."""
    encoding = (content_encoding or b"").strip().lower()
    if encoding in (b"", b"identity"):
        return raw
    wbits = INFLATE_WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported: send gzip, deflate or none."
        )
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(
            f"The body is not valid {encoding.decode()} data: {exc}.", error_type="invalid_encoding"
        ) from exc
    if len(body) > limit:
        raise LimitExceeded(
            f"The request body, inflated, is over the limit of {limit} bytes.", error_type="body_too_large", limit=limit
        )
    if not inflater.eof:
        raise InvalidInput(f"The body's {encoding.decode()} data ends early.", error_type="invalid_encoding")
    if inflater.unused_data:
        raise InvalidInput(f"The body has bytes after its {encoding.decode()} data.", error_type="invalid_encoding")
    return body


def parse_body(raw: bytes, header_length: bytes | None) -> InferBody:
    """Split the body at ``header_length`` (the header's value, if sent) and validate its JSON."""
    view = memoryview(raw)
    if header_length is None:
        header, binary = raw, view[len(raw) :]
    else:
        text = header_length.strip()
        if not text.isdigit() or int(text) > len(raw):
            raise InvalidInput(
                f"Inference-Header-Content-Length must be the JSON header's length in bytes, at most the body's "
                f"{len(raw)} (got {header_length.decode('latin-1')!r}).",
                error_type="invalid_binary_data",
            )
        header, binary = bytes(view[: int(text)]), view[int(text) :]
    tree = _parse_header(header)
    try:
        request = InferenceRequest.model_validate(tree)
    except ValidationError as exc:
        raise request_validation_error(exc) from exc
    return InferBody(request, binary)


def _parse_header(header: bytes) -> Any:
    try:
        return parse_json(header)
    except InvalidInput:
        if b"NaN" not in header and b"Infinity" not in header:
            raise
        try:  # the standard library reads the literals NaN, Infinity and -Infinity
            return json.loads(header)
        except (ValueError, RecursionError):
            pass
        raise


def decode_inputs(body: InferBody, budget: ElementBudget) -> dict[str, torch.Tensor]:
    """Every input as a CPU tensor of its datatype (INT32 read as int64), by name, in request
    order; the binary data must be used up exactly."""
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for item in body.request.inputs:
        if item.name in tensors:
            raise InvalidInput(f"The input {item.name!r} is given twice.", error_type="invalid_input")
        dtype = _dtype(item)
        if math.prod(n for n in item.shape if n) > MAX_EXTENT:
            raise InvalidInput(
                f"The shape {item.shape} of input {item.name!r} is too large.", error_type="invalid_tensor"
            )
        size = item.parameters.get("binary_data_size")
        if size is None:
            tensor = _from_json(item, dtype, budget)
        else:
            tensor = _from_binary(item, dtype, size, body.binary[offset:], budget)
            offset += tensor.numel() * dtype.itemsize
        tensors[item.name] = tensor
    if offset != len(body.binary):
        raise InvalidInput(
            f"The body holds {len(body.binary)} bytes after the JSON header, but the inputs' binary_data_size "
            f"add up to {offset}.",
            error_type="invalid_binary_data",
        )
    return tensors


def _dtype(item: RequestInput) -> torch.dtype:
    dtype = DATATYPES.get(item.datatype)
    if dtype is None:
        raise InvalidInput(
            f"Input {item.name!r} has datatype {item.datatype!r}; this server takes {', '.join(DATATYPES)}.",
            error_type="invalid_dtype",
            where=item.name,
        )
    return dtype


def _from_binary(
    item: RequestInput, dtype: torch.dtype, size: object, binary: memoryview, budget: ElementBudget
) -> torch.Tensor:
    count = math.prod(item.shape)
    expected = count * dtype.itemsize
    if item.data is not None:
        raise InvalidInput(f"Input {item.name!r} has both data and binary_data_size.", error_type="invalid_binary_data")
    if type(size) is not int or size != expected:
        raise InvalidInput(
            f"Input {item.name!r} declares binary_data_size {size!r}, but shape {item.shape} of {item.datatype} "
            f"takes {expected} bytes.",
            error_type="invalid_binary_data",
        )
    if size > len(binary):
        raise InvalidInput(
            f"Input {item.name!r} needs {size} bytes of binary data, but only {len(binary)} remain in the body.",
            error_type="invalid_binary_data",
        )
    budget.take(count, item.name)
    if count == 0:
        return torch.empty(item.shape, dtype=dtype)
    tensor = torch.frombuffer(bytearray(binary[:size]), dtype=dtype).reshape(item.shape)
    return tensor.to(torch.int64) if dtype == torch.int32 else tensor


def _from_json(item: RequestInput, dtype: torch.dtype, budget: ElementBudget) -> torch.Tensor:
    if item.data is None:
        raise InvalidInput(
            f"Input {item.name!r} has no data: send data, or binary_data_size and the bytes after the JSON header.",
            error_type="invalid_tensor",
            where=item.name,
        )
    floating = dtype.is_floating_point
    tensor = decode(
        item.data,
        where=item.name,
        dtype=dtype if floating else torch.float64,
        device=CPU,
        budget=budget,
        kind="float" if floating else "index",
    )
    if tensor.numel() != math.prod(item.shape):
        raise InvalidInput(
            f"Input {item.name!r} holds {tensor.numel()} elements, but its shape {item.shape} needs "
            f"{math.prod(item.shape)}.",
            error_type="shape_mismatch",
            where=item.name,
        )
    low, high = INT32_RANGE
    if dtype == torch.int32 and tensor.numel() and not (low <= int(tensor.min()) and int(tensor.max()) <= high):
        raise InvalidInput(f"Input {item.name!r} holds values outside INT32's range.", error_type="invalid_tensor")
    return tensor.reshape(item.shape)


def binary_outputs(request: InferenceRequest, names: list[str]) -> dict[str, bool]:
    """Which of the outputs ``names`` go back as binary data: each one's ``binary_data``, else
    the request's ``binary_data_output``, else JSON."""
    default = _flag(request.parameters, "binary_data_output", False)
    asked = {output.name: output.parameters for output in request.outputs or ()}
    if any("classification" in parameters for parameters in asked.values()):
        raise InvalidInput(
            "This server does not have the classification extension: ask for the outputs themselves.",
            error_type="invalid_param",
            param="classification",
        )
    return {name: _flag(asked.get(name, {}), "binary_data", default) for name in names}


def _flag(parameters: Mapping[str, object], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"The parameter {name} must be true or false.", error_type="invalid_param", param=name)
    return value


def write_response(
    header: dict[str, Any], outputs: Mapping[str, torch.Tensor], binary: Mapping[str, bool]
) -> tuple[bytes, int | None]:
    """The response body: the JSON header with every output, then the binary ones' bytes in the
    same order; and the header's length when any output is binary."""
    chunks: list[bytes] = []
    written = []
    for name, tensor in outputs.items():
        tensor = tensor.detach().cpu()
        if tensor.dtype not in DATATYPE_NAMES:  # a formula's boolean or integer value
            tensor = tensor.to(torch.float64 if tensor.is_floating_point() else torch.int64)
        entry: dict[str, Any] = {"name": name, "datatype": DATATYPE_NAMES[tensor.dtype], "shape": list(tensor.shape)}
        if binary[name]:
            data = tensor.contiguous().numpy().tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = encode(tensor.reshape(-1), "json")
        written.append(entry)
    head = dump_json({**header, "outputs": written})
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)
