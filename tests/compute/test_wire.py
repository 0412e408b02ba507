"""The wire codec against hand-written expectations: limits at their exact bounds, the error
bodies (type, position and message), the parser's lazy/exact split, and the bytes of encoded
results. Written to kill the mutants of service/compute/wire/ (scripts/mutation codec parsing);
the expected values come from the contract and the standard library (struct, base64), never
from the module's own constants."""

from __future__ import annotations

import base64
import math
import struct
import sys
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from service.compute import wire as tensors
from service.compute.wire import codec
from service.errors import InvalidInput, LimitExceeded

CPU = torch.device("cpu")
BIG = 4097  # bytes: past the small-body switch, so simdjson parses


def padded(body: bytes, size: int = BIG) -> bytes:
    return body + b" " * max(0, size - len(body))


def decode(
    value: Any, kind: tensors.Kind = "float", dtype: torch.dtype = torch.float64, device: torch.device = CPU
) -> torch.Tensor:
    return tensors.decode(
        value, where="input", dtype=dtype, device=device, budget=tensors.ElementBudget(10**6), kind=kind
    )


def decode_both(value: Any, kind: tensors.Kind = "float") -> torch.Tensor:
    """``input`` decoded from a small body (orjson) and a big one (simdjson): the same tensor."""
    body = orjson.dumps({"input": value})
    small, big = (decode(tensors.parse_json(raw)["input"], kind) for raw in (body, padded(body)))
    assert small.dtype == big.dtype and small.shape == big.shape
    assert torch.equal(small.nan_to_num(), big.nan_to_num())
    return small


def error_both(value: Any, kind: tensors.Kind = "float") -> InvalidInput:
    """The error of decoding ``input`` from a small and a big body: the same error body."""
    body = orjson.dumps({"input": value})
    errors = []
    for raw in (body, padded(body)):
        with pytest.raises(InvalidInput) as caught:
            decode(tensors.parse_json(raw)["input"], kind)
        errors.append(caught.value)
    assert errors[0].body() == errors[1].body()
    return errors[0]


def wire(*values: float, fmt: str = "d") -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}{fmt}", *values)).decode()


def encoded(shape: Any, dtype: str, payload: str) -> dict[str, Any]:
    return {"shape": shape, "dtype": dtype, "base64": payload}


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def json_of(tensor: torch.Tensor) -> bytes:
    return orjson.dumps(tensors.encode(tensor, "json"), option=orjson.OPT_SERIALIZE_NUMPY)


# --- the tables ------------------------------------------------------------------------------


def test_dtype_tables_are_the_contracts() -> None:
    assert {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64} == tensors.WIRE_DTYPES
    assert {"float32": torch.float32, "float64": torch.float64} == tensors.FLOAT_DTYPES
    assert {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64"} == tensors.DTYPE_NAMES


# --- error bodies ----------------------------------------------------------------------------

NOT_A_NUMBER = '\'input[1]\' must be a number (or "NaN", "Infinity", "-Infinity"), not '


@pytest.mark.parametrize(
    ("value", "kind", "error_type", "where", "message"),
    [
        (
            [[1, 2], 3],
            "float",
            "ragged_array",
            "input[1]",
            "'input[1]' should be an array of length 2 like its siblings, but is 3: the array is ragged.",
        ),
        (
            [[1, 2], [3]],
            "float",
            "ragged_array",
            "input[1]",
            "'input[1]' has length 1 but its siblings have length 2: the array is ragged.",
        ),
        (
            [1, [2]],
            "float",
            "ragged_array",
            "input[1]",
            "'input[1]' is an array where its siblings are numbers: the array is ragged.",
        ),
        ([1, None], "float", "not_a_number", "input[1]", NOT_A_NUMBER + "null."),
        ([1, True], "float", "not_a_number", "input[1]", NOT_A_NUMBER + "a boolean."),
        ([1, "one"], "float", "not_a_number", "input[1]", NOT_A_NUMBER + "the string 'one'."),
        ([1, "x" * 50], "float", "not_a_number", "input[1]", NOT_A_NUMBER + "the string '" + "x" * 40 + "'."),
        ([1, {"a": 1}], "float", "not_a_number", "input[1]", NOT_A_NUMBER + "an object."),
        ([0, 2**63], "index", "not_a_number", "input[1]", NOT_A_NUMBER + "9223372036854775808."),
        ([0, 1.5], "index", "invalid_dtype", "input[1]", "'input[1]' must be an integer class index, not 1.5."),
        ([0, [1]], "index", "invalid_dtype", "input[1]", "'input[1]' must be an integer class index, not an array."),
        (nested(33, 1.0), "float", "invalid_tensor", "input", "'input' is nested deeper than 32 levels."),
        (
            {"shape": [1], "dtype": "float64"},
            "float",
            "invalid_tensor",
            "input",
            "'input' must be a number, a nested array, or an object with exactly the keys shape, dtype and base64 "
            "(got ['dtype', 'shape']).",
        ),
        (
            encoded("2", "float64", ""),
            "float",
            "invalid_tensor",
            "input.shape",
            "'input.shape' must be a list of at most 32 non-negative integers.",
        ),
        (
            encoded([1], "float16", ""),
            "float",
            "invalid_tensor",
            "input.dtype",
            "'input.dtype' must be one of ['float32', 'float64', 'int64'] (got 'float16').",
        ),
        ({"shape": [1], "dtype": "float64", "base64": 5}, "float", "invalid_tensor", "input.base64", None),
        (
            encoded([0, 2**41], "float64", ""),
            "float",
            "invalid_tensor",
            "input.shape",
            "'input.shape' [0, 2199023255552] is too large, even with no elements.",
        ),
        (
            encoded([2], "float64", "AAAA"),
            "float",
            "invalid_base64",
            "input.base64",
            "'input.base64' holds 3 bytes, but shape [2] of float64 needs 16.",
        ),
        (
            encoded([1], "float32", wire(1.0, fmt="f")),
            "index",
            "invalid_dtype",
            "input",
            "'input' must hold integer class indices (dtype int64), not float32.",
        ),
    ],
)
def test_error_bodies(value: Any, kind: tensors.Kind, error_type: str, where: str, message: str | None) -> None:
    error = error_both(value, kind)
    assert error.error_type == error_type
    assert error.details == {"where": where}
    assert error.message == (message or "'input.base64' must be a string.")


@pytest.mark.parametrize("payload", ["not base64!", "AAAAAAAA\n+D8=", "AAAAAAAA +D8="])
def test_base64_is_validated_strictly(payload: str) -> None:
    """Whitespace and other non-alphabet characters are refused, not skipped."""
    error = error_both(encoded([1], "float64", payload))
    assert error.error_type == "invalid_base64"
    assert error.details == {"where": "input.base64"}
    assert error.message.startswith("'input.base64' is not valid base64: ") and error.message.endswith(".")
    assert torch.equal(decode(encoded([1], "float64", "AAAAAAAA+D8=")), torch.tensor([1.5], dtype=torch.float64))


def test_malformed_json_message() -> None:
    for raw in (b'{"input": [1, 2,]}', padded(b'{"input": [1, 2,]}')):
        with pytest.raises(InvalidInput) as caught:
            tensors.parse_json(raw)
        assert caught.value.error_type == "invalid_json"
        assert caught.value.message.startswith("The body is not valid JSON: ")
        assert caught.value.message.endswith(".")


def test_nesting_past_the_interpreter_on_the_fast_parser() -> None:
    """A big body nested deeper than Python recurses (1000 frames, Python's default; TorchInductor
    raises the limit once imported, so the test sets it) but within simdjson's limit (1024
    levels) is a clear 400."""
    depth = 1020
    body = padded(b'{"a":' * depth + b"1" + b"}" * depth, 5000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        with pytest.raises(InvalidInput) as caught:
            tensors.parse_json(body)
    finally:
        sys.setrecursionlimit(limit)
    assert caught.value.error_type == "invalid_json"
    assert caught.value.message == "The body nests objects or arrays too deeply."


def test_a_lazy_row_among_numbers_is_ragged() -> None:
    error = error_both(["NaN", [1.0] * 64])
    assert (error.error_type, error.details) == ("ragged_array", {"where": "input[1]"})


def test_unicode_escaped_brackets_cannot_hide_a_nested_leaf() -> None:
    r"""A key "\u005b" decodes to "[" without one in the raw body: were the bracket count
    trusted, as_buffer would flatten [3, [4]] silently. Such bodies take the exact parser."""
    body = b'{"\\u005b": 0, "input": [[1.0, 2.0], [3.0, [4.0]]]}'
    for raw in (body, padded(body)):
        with pytest.raises(InvalidInput) as caught:
            decode(tensors.parse_json(raw)["input"])
        assert (caught.value.error_type, caught.value.details) == ("ragged_array", {"where": "input[1][1]"})


# --- limits at their bounds ------------------------------------------------------------------


def test_rank_limit_is_32_for_nested_arrays() -> None:
    assert decode_both(nested(32, 2.5)).shape == (1,) * 32
    assert decode_both(nested(31, [1.0] * 70)).shape == (1,) * 31 + (70,)
    assert error_both(nested(33, 2.5)).error_type == "invalid_tensor"


def test_rank_limit_is_32_for_encoded_tensors() -> None:
    assert decode(encoded([1] * 32, "float64", wire(1.5))).shape == (1,) * 32
    error = error_both(encoded([1] * 33, "float64", wire(1.5)))
    assert (error.error_type, error.details) == ("invalid_tensor", {"where": "input.shape"})


def test_encoded_shapes_with_zero_extents() -> None:
    for shape in ([0], [2, 0], [0, 2**40]):
        tensor = decode(encoded(shape, "float64", ""))
        assert tensor.shape == tuple(shape) and tensor.dtype == torch.float64
    assert decode(encoded([0], "int64", ""), kind="index").dtype == torch.int64
    for shape in ([0, 2**40 + 1], [2**20, 0, 2**20 + 1]):
        error = error_both(encoded(shape, "float64", ""))
        assert (error.error_type, error.details) == ("invalid_tensor", {"where": "input.shape"})


def test_encoded_scalars_and_single_elements() -> None:
    assert torch.equal(decode(encoded([], "float64", wire(1.5))), torch.tensor(1.5, dtype=torch.float64))
    assert torch.equal(decode(encoded([1], "float64", wire(-2.25))), torch.tensor([-2.25], dtype=torch.float64))
    three = decode(encoded([3], "int64", wire(7, -1, 2**62, fmt="q")), kind="index")
    assert three.tolist() == [7, -1, 2**62]


def test_index_range_is_int64() -> None:
    extremes = decode([-(2**63), 2**63 - 1, 2**62 + 1], kind="index")
    assert extremes.dtype == torch.int64
    assert extremes.tolist() == [-(2**63), 2**63 - 1, 2**62 + 1]
    assert decode_both([2**62 + 1, 3], kind="index").tolist() == [2**62 + 1, 3]
    for outside in (2**63, -(2**63) - 1, 2**64):
        with pytest.raises(InvalidInput) as caught:
            decode([0, outside], kind="index")
        assert caught.value.error_type == "not_a_number"
    with pytest.raises(InvalidInput) as caught:
        decode([10**45], kind="index")
    assert caught.value.message == '\'input[0]\' must be a number (or "NaN", "Infinity", "-Infinity"), not 1' + (
        "0" * 39 + "."
    )


def test_element_budget_holds_exactly_its_limit() -> None:
    budget = tensors.ElementBudget(5)
    tensors.decode([1.0, 2.0], where="a", dtype=torch.float64, device=CPU, budget=budget)
    tensors.decode([[1.0], [2.0], [3.0]], where="b", dtype=torch.float64, device=CPU, budget=budget)
    assert budget.used == 5
    with pytest.raises(LimitExceeded) as caught:
        tensors.decode([4.0], where="c", dtype=torch.float64, device=CPU, budget=budget)
    assert caught.value.error_type == "too_many_elements"
    assert caught.value.details == {"limit": 5, "where": "c"}
    assert caught.value.message == "The tensors of this request hold more than 5 elements (reached at 'c')."


# --- decoding: dtypes, devices and the fast paths --------------------------------------------


def test_decode_casts_to_the_requested_dtype() -> None:
    matrix = decode([[1, 2], [3, 4.5]], dtype=torch.float32)
    assert matrix.dtype == torch.float32 and matrix.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert decode(encoded([1], "float64", wire(0.5)), dtype=torch.float32).dtype == torch.float32
    for dtype in (torch.float16, torch.bfloat16):
        flat = decode([1, 2.5], dtype=dtype)
        assert flat.dtype == dtype and flat.tolist() == [1.0, 2.5]


def test_float64_requests_are_not_rounded_to_float32() -> None:
    flat = decode([0.1, 1e39, -1e300], dtype=torch.float64)
    assert flat.dtype == torch.float64
    assert flat.tolist() == [0.1, 1e39, -1e300]


def test_flat_lists_land_on_the_requested_device() -> None:
    """The meta device stands in for CUDA: the fast path must move what it built on the CPU."""
    meta = torch.device("meta")
    assert decode([1.0, 2.0], dtype=torch.float32, device=meta).device == meta
    assert decode([[1.0, 2.0]], dtype=torch.float32, device=meta).device == meta


def test_fast_paths_never_walk_the_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat lists of numbers (ints and floats mixed) and big numeric arrays skip the exact walker."""

    def walker(*args: Any) -> torch.Tensor:
        raise AssertionError("the exact walker ran")

    rows = [[float(i), float(-i)] * 40 for i in range(3)]
    body = padded(orjson.dumps({"x": rows, "i": [[i, 2 * i] * 40 for i in range(3)]}))
    tree = tensors.parse_json(body)
    monkeypatch.setattr(codec, "_decode_nested", walker)
    for dtype in (torch.float32, torch.float64):
        values = tensors.decode([1, 2.5, -3], where="input", dtype=dtype, device=CPU, budget=tensors.ElementBudget(9))
        assert values.dtype == dtype and values.tolist() == [1.0, 2.5, -3.0]
    assert torch.equal(decode(tree["x"]), torch.tensor(rows, dtype=torch.float64))
    assert decode(tree["i"], kind="index").tolist() == [[i, 2 * i] * 40 for i in range(3)]


# --- the parser's lazy/exact split -----------------------------------------------------------


def plain(node: Any) -> Any:
    if isinstance(node, tensors.LazyArray):
        return node.array.as_list()
    if isinstance(node, dict):
        return {key: plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [plain(value) for value in node]
    return node


def test_lazy_arrays_and_the_bracket_count() -> None:
    """Regular numeric arrays stay lazy with their shapes; everything else is Python. Brackets in
    keys, strings, short and irregular arrays before and after them are all counted."""
    cube = [[[float(i + j + k) for k in range(4)] for j in range(3)] for i in range(2)]
    document = {
        "k[ey": [1, 2],
        "note": "a[b",
        "flat64": [0.5] * 64,
        "flat63": [0.5] * 63,
        "matrix": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
        "cube": cube,
        "empty_rows": [[], []],
        "deep": nested(31, [1.0, 2.0]),
        "objects": [{"a": 1}] * 70,
        "strings": ["NaN"] * 70,
        "irregular": [[1], [2, {"k[": "s["}]],
        "short": [1, 2],
        "note2": "c[d",
        "k2[": 0,
    }
    tree = tensors.parse_json(padded(orjson.dumps(document)))
    shapes = {key: value.shape for key, value in tree.items() if isinstance(value, tensors.LazyArray)}
    assert shapes == {
        "flat64": (64,),
        "matrix": (2, 3),
        "cube": (2, 3, 4),
        "empty_rows": (2, 0),
        "deep": (1,) * 31 + (2,),
    }
    assert plain(tree) == document
    assert type(tree["objects"][0]) is dict


def test_small_bodies_are_all_python() -> None:
    document = orjson.dumps({"x": [0.5] * 64})
    exact = padded(document, 4096)
    assert len(exact) == 4096
    assert type(tensors.parse_json(exact)["x"]) is list
    assert isinstance(tensors.parse_json(padded(document, 4097))["x"], tensors.LazyArray)


def test_escapes_other_than_unicode_keep_arrays_lazy() -> None:
    body = padded(orjson.dumps({"note": 'a "quoted"\nline\\', "x": [0.5] * 64}))
    assert b"\\n" in body
    assert isinstance(tensors.parse_json(body)["x"], tensors.LazyArray)
    unicode = padded(b'{"note": "\\u0041", "x": [' + b"0.5, " * 63 + b"0.5]}")
    assert type(tensors.parse_json(unicode)["x"]) is list


# --- encoding --------------------------------------------------------------------------------


def test_encode_detaches_and_widens() -> None:
    assert json_of(torch.tensor([1.5, -2.0], requires_grad=True)) == b"[1.5,-2.0]"
    assert json_of(torch.tensor([True, False])) == b"[1,0]"
    assert json_of(torch.tensor([[3, -4]], dtype=torch.int32)) == b"[[3,-4]]"
    assert tensors.encode(torch.tensor([0.5, 2.0], dtype=torch.float16), "base64") == {
        "shape": [2],
        "dtype": "float64",
        "base64": wire(0.5, 2.0),
    }
    assert tensors.encode(torch.tensor([7], dtype=torch.int16), "base64") == {
        "shape": [1],
        "dtype": "int64",
        "base64": wire(7, fmt="q"),
    }


def test_non_finite_values_in_short_and_long_vectors() -> None:
    short = torch.tensor([1.0, math.nan, math.inf, -math.inf], dtype=torch.float64)
    assert json_of(short) == b'[1.0,"NaN","Infinity","-Infinity"]'
    assert json_of(short.to(torch.float32)) == b'[1.0,"NaN","Infinity","-Infinity"]'
    long = torch.cat([torch.full((70,), 0.5), torch.tensor([math.nan, -math.inf])])
    assert json_of(long) == b"[" + b"0.5," * 70 + b'"NaN","-Infinity"]'
    assert json_of(torch.tensor([0.1, 2.0], dtype=torch.float32)) == b"[0.1,2.0]"
    assert json_of(torch.arange(3)) == b"[0,1,2]"


def test_zero_dimensional_results_are_plain_numbers() -> None:
    for tensor, expected in (
        (torch.tensor(0.25, dtype=torch.float64), b"0.25"),
        (torch.tensor(0.1, dtype=torch.float32), b"0.1"),
        (torch.tensor(7), b"7"),
        (torch.tensor(-math.inf), b'"-Infinity"'),
    ):
        value = tensors.encode(tensor, "json")
        assert not isinstance(value, np.ndarray)
        assert json_of(tensor) == expected


def test_encode_extent_limit() -> None:
    assert json_of(torch.empty(0, 2**40)) == b"[]"
    assert tensors.encode(torch.empty(0, 2**40), "base64") == {
        "shape": [0, 2**40],
        "dtype": "float32",
        "base64": "",
    }
    with pytest.raises(LimitExceeded) as caught:
        tensors.encode(torch.empty(0, 2**40 + 1), "json")
    assert caught.value.error_type == "result_too_large"
    assert caught.value.message == "A result of shape [0, 1099511627777] is too large to encode."


def test_scalar_to_wire() -> None:
    assert tensors.scalar_to_wire(math.nan) == "NaN"
    assert tensors.scalar_to_wire(math.inf) == "Infinity"
    assert tensors.scalar_to_wire(-math.inf) == "-Infinity"
    assert tensors.scalar_to_wire(-0.5) == -0.5
    assert tensors.scalar_to_wire(0.0) == 0.0
