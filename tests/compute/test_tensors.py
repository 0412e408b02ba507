"""The wire format: parsing, the lazy fast path against the exact walker, base64, encoding."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from service.compute import wire as tensors
from service.compute.wire.codec import FLOAT32_MAX
from service.errors import InvalidInput, LimitExceeded
from tests.helpers import to_base64

CPU = torch.device("cpu")


def decode_one(body: bytes, kind: tensors.Kind = "float", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    tree = tensors.parse_json(body)
    budget = tensors.ElementBudget(10**7)
    return tensors.decode(tree["input"], where="input", dtype=dtype, device=CPU, budget=budget, kind=kind)


def decode_body(body: bytes, kind: tensors.Kind = "float", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Decode ``input`` on both parser paths (as is, and padded past the small-body switch to
    simdjson); they must agree, on the tensor or on the error."""
    outcomes: list[torch.Tensor | InvalidInput] = []
    for raw in (body, body + b" " * (tensors.SMALL_BODY_BYTES + 1)):
        try:
            outcomes.append(decode_one(raw, kind, dtype))
        except InvalidInput as error:
            outcomes.append(error)
    small, big = outcomes
    if isinstance(small, torch.Tensor) and isinstance(big, torch.Tensor):
        assert torch.equal(small.nan_to_num(), big.nan_to_num())
        assert torch.equal(small.isnan(), big.isnan())
        return small
    assert isinstance(small, InvalidInput), small
    assert isinstance(big, InvalidInput), big
    assert small.body() == big.body()
    raise small


def decode_value(value: Any, kind: tensors.Kind = "float") -> torch.Tensor:
    return decode_body(orjson.dumps({"input": value}), kind)


def error_of(value: Any, kind: tensors.Kind = "float") -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        decode_value(value, kind)
    return caught.value


@pytest.mark.parametrize("length", [3, 64, 1000])
def test_nested_arrays_small_and_lazy(length: int) -> None:
    values = [[float(i + j) for j in range(length)] for i in range(2)]
    assert torch.equal(decode_value(values), torch.tensor(values, dtype=torch.float64))
    assert torch.equal(decode_value(values[0]), torch.tensor(values[0], dtype=torch.float64))


def test_scalars_and_empty_arrays() -> None:
    assert decode_value(3).shape == ()
    assert decode_value(2.5).item() == 2.5
    assert decode_value([]).shape == (0,)
    assert decode_value([[], []]).shape == (2, 0)


def test_non_finite_strings_in_small_and_lazy_arrays() -> None:
    for padding in (0, 100):
        values = [1.0] * padding + ["NaN", "Infinity", "-Infinity"]
        tensor = decode_value(values)
        assert math.isnan(tensor[-3]) and tensor[-2] == math.inf and tensor[-1] == -math.inf
    assert decode_value("Infinity").item() == math.inf


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ([[1, 2], [3]], "input[1]"),
        ([[1], [2, 3]], "input[1]"),
        ([1, [2], 3], "input[1]"),
        ([[1, [2]], [3, 4]], "input[0][1]"),
        ([0.5] * 100 + [[1.0]], "input[100]"),
        ([[0.5] * 70, [0.5] * 69 + [[1.0]]], "input[1][69]"),
        ([[1, 2], 3], "input[1]"),
    ],
)
def test_ragged_arrays_name_the_position(value: Any, where: str) -> None:
    error = error_of(value)
    assert error.error_type == "ragged_array"
    assert error.details["where"] == where


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ([1, True], "input[1]"),
        ([1, None], "input[1]"),
        ([1, "one"], "input[1]"),
        ([[1, 2], [3, {"a": 1}]], "input[1][1]"),
        ([0.0] * 99 + [False], "input[99]"),
        ("nan", "input"),
        (None, "input"),
    ],
)
def test_non_numbers_name_the_position(value: Any, where: str) -> None:
    error = error_of(value)
    assert error.error_type == "not_a_number"
    assert error.details["where"] == where


def test_index_tensors_need_integers() -> None:
    assert torch.equal(decode_value([0, 2, 1], kind="index"), torch.tensor([0, 2, 1]))
    assert decode_value(list(range(100)), kind="index").dtype == torch.int64
    assert error_of([0, 1.5], kind="index").error_type == "invalid_dtype"
    assert error_of([0.0] * 70, kind="index").error_type == "invalid_dtype"


def test_nesting_deeper_than_any_rank_is_refused() -> None:
    deep: Any = 1.0
    for _ in range(tensors.MAX_RANK + 1):
        deep = [deep]
    assert error_of(deep).error_type == "invalid_tensor"


def test_a_string_containing_brackets_keeps_the_fast_path_exact() -> None:
    body = orjson.dumps({"note": "a[b]", "input": [[1.0] * 70, [2.0] * 70]})
    assert decode_body(body).shape == (2, 70)


def test_malformed_json_reports_the_position_on_both_paths() -> None:
    body = b'{"input": [1, 2,]}'
    for raw in (body, body + b" " * (tensors.SMALL_BODY_BYTES + 1)):
        with pytest.raises(InvalidInput) as caught:
            tensors.parse_json(raw)
        assert caught.value.error_type == "invalid_json"
        assert caught.value.details["position"] in (15, 16)  # at the comma or the bracket after it


def test_base64_round_trip_for_every_dtype() -> None:
    for tensor in (torch.randn(2, 3), torch.randn(4, dtype=torch.float64), torch.arange(5)):
        decoded = tensors.decode(
            to_base64(tensor),
            where="input",
            dtype=tensor.dtype if tensor.is_floating_point() else torch.float64,
            device=CPU,
            budget=tensors.ElementBudget(100),
        )
        assert torch.equal(decoded, tensor.to(decoded.dtype))
        assert tensors.encode(tensor, "base64") == to_base64(tensor)


@pytest.mark.parametrize(
    ("change", "error_type"),
    [
        ({"base64": "AAAA"}, "invalid_base64"),
        ({"base64": "not base64!"}, "invalid_base64"),
        ({"dtype": "float16"}, "invalid_tensor"),
        ({"shape": [-1]}, "invalid_tensor"),
        ({"shape": "2"}, "invalid_tensor"),
        ({"extra": 1}, "invalid_tensor"),
        ({"base64": 5}, "invalid_tensor"),
    ],
)
def test_bad_base64_objects(change: dict[str, Any], error_type: str) -> None:
    value = {**to_base64(torch.ones(2)), **change}
    assert error_of(value).error_type == error_type


def test_float_base64_where_indices_are_needed() -> None:
    assert error_of(to_base64(torch.ones(2)), kind="index").error_type == "invalid_dtype"


def test_element_budget_counts_every_tensor() -> None:
    budget = tensors.ElementBudget(5)
    tensors.decode([1, 2, 3], where="a", dtype=torch.float32, device=CPU, budget=budget)
    with pytest.raises(LimitExceeded) as caught:
        tensors.decode([1, 2, 3], where="b", dtype=torch.float32, device=CPU, budget=budget)
    assert caught.value.details["where"] == "b"


def test_encode_writes_strict_json_with_non_finite_strings() -> None:
    tensor = torch.tensor([[1.5, math.nan], [math.inf, -math.inf]], dtype=torch.float32)
    encoded = orjson.dumps(tensors.encode(tensor, "json"), option=orjson.OPT_SERIALIZE_NUMPY)
    assert encoded == b'[[1.5,"NaN"],["Infinity","-Infinity"]]'
    assert tensors.encode(torch.tensor(math.nan), "json") == "NaN"
    assert tensors.encode(torch.tensor(0.25), "json") == 0.25


def test_float32_is_written_with_its_shortest_repr() -> None:
    encoded = orjson.dumps(
        tensors.encode(torch.tensor([0.1], dtype=torch.float32), "json"), option=orjson.OPT_SERIALIZE_NUMPY
    )
    assert encoded == b"[0.1]"


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


FLOAT32_EDGE = [
    FLOAT32_MAX,
    -FLOAT32_MAX,
    math.nextafter(FLOAT32_MAX, math.inf),  # rounds down to the largest float32
    3.4028235677973366e38,  # past the rounding boundary: infinity
    -1e39,
    1e-50,  # underflows to zero
    2**63 + 1,
    -(2**70) - 12345,
]


@pytest.mark.parametrize("values", [FLOAT32_EDGE, [0.1, 2**40 + 1, -7], FLOAT32_EDGE[:2], []])
def test_flat_lists_cast_to_float32_as_torch_casts_float64(values: list[float]) -> None:
    """Each number is rounded once, like torch's cast of the float64 tensor; overflow is infinity."""
    budget = tensors.ElementBudget(100)
    tensor = tensors.decode(values, where="input", dtype=torch.float32, device=CPU, budget=budget)
    assert torch.equal(tensor, torch.tensor(values, dtype=torch.float64).to(torch.float32))


@given(st.lists(st.one_of(finite, st.integers(-(2**80), 2**80)), max_size=20))
def test_any_flat_list_casts_to_float32_as_torch_does(values: list[float]) -> None:
    budget = tensors.ElementBudget(100)
    tensor = tensors.decode(values, where="input", dtype=torch.float32, device=CPU, budget=budget)
    assert torch.equal(tensor, torch.tensor(values, dtype=torch.float64).to(torch.float32))


@given(st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=80))
def test_json_round_trip_is_exact_in_float64(rows: list[list[float]]) -> None:
    tensor = decode_value(rows)
    assert torch.equal(tensor, torch.tensor(rows, dtype=torch.float64))
    wire = orjson.dumps(tensors.encode(tensor, "json"), option=orjson.OPT_SERIALIZE_NUMPY)
    assert torch.equal(torch.tensor(orjson.loads(wire), dtype=torch.float64), tensor)


@given(
    st.recursive(
        st.one_of(finite, st.booleans(), st.none(), st.text(max_size=3)),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=30,
    )
)
def test_any_json_value_decodes_or_is_a_clear_400(value: Any) -> None:
    outcome: str
    try:
        outcome = f"tensor of shape {tuple(decode_value(value).shape)}"
    except InvalidInput as error:
        outcome = error.error_type
    assert outcome.startswith("tensor") or outcome in {"ragged_array", "not_a_number", "invalid_tensor"}


@pytest.mark.parametrize("depth", [900, 5_000, 200_000])
def test_deep_nesting_parses_or_is_a_400(depth: int) -> None:
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    outcome: str
    try:
        outcome = type(tensors.parse_json(objects)).__name__
    except InvalidInput as error:
        outcome = error.error_type
    assert outcome in {"dict", "invalid_json"}
    arrays = b'{"input": ' + b"[" * depth + b"]" * depth + b"}"
    for raw in (arrays, arrays + b" " * (tensors.SMALL_BODY_BYTES + 1)):
        with pytest.raises(InvalidInput) as caught:
            decode_one(raw)
        assert caught.value.error_type in {"invalid_json", "invalid_tensor"}
