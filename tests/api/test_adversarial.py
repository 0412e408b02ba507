"""Adversarial requests found in review, each sent twice: as is (orjson path) and padded with
whitespace past 4 KiB (simdjson path). Both must give the same clear answer; never a 500."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.compute.wire import SMALL_BODY_BYTES
from tests.conftest import AppClient
from tests.helpers import from_wire

BIG = 10**400
CASES: list[tuple[str, Any, int, str | None]] = [
    ("/v1/differentiate", {"expression": "x > 0", "inputs": {"x": [1.0, -1.0]}, "encoding": "base64"}, 200, None),
    ("/v1/differentiate", {"expression": "x * 1" + "0" * 400, "inputs": {"x": 1.0}}, 400, "invalid_expression"),
    (
        "/v1/differentiate",
        {"expression": f"leaky_relu(x, negative_slope={BIG})", "inputs": {"x": 1.0}},
        400,
        "invalid_expression",
    ),
    ("/v1/differentiate", {"expression": f"clamp(x, min=-{BIG})", "inputs": {"x": 1.0}}, 400, "invalid_expression"),
    (
        "/v1/differentiate",
        {
            "expression": "cross_entropy(x, t, ignore_index=100000000000000000000)",
            "inputs": {"x": [[1.0, 2.0]], "t": [1]},
        },
        400,
        "invalid_argument",
    ),
    (
        "/v1/differentiate",
        {"expression": "x[100000000000000000000]", "inputs": {"x": [1.0]}},
        400,
        "invalid_expression",
    ),
    (
        "/v1/differentiate",
        # Refused by the shape-only estimate that runs first: torch's meta kernels compute the
        # strides of an empty tensor of this shape, which overflow.
        {"expression": "reshape(x, 0, 4611686018427387904, 4)", "inputs": {"x": []}},
        400,
        "computation_failed",
    ),
    (
        "/v1/differentiate",
        {"expression": "sum(reshape(x,-1,1,1)*reshape(x,1,-1,1)*reshape(x,1,1,-1))", "inputs": {"x": [0.5] * 700}},
        413,
        "intermediate_too_large",
    ),
    (
        "/v1/differentiate",
        {"expression": "sum(reshape(x, -1, 1) @ reshape(x, 1, -1))", "inputs": {"x": [0.5] * 5000}},
        413,
        "intermediate_too_large",
    ),
    (
        "/v1/differentiate",
        {
            "expression": "cross_entropy(x, t, weight=w)",
            "inputs": {"x": [[1, 2], [0.5, 0.1]], "t": [0, 1], "w": [1, 2]},
        },
        200,
        None,
    ),
    (
        "/v1/differentiate",
        {"expression": "sum(x)", "inputs": {"x": [1.0]}, "wrt": [], "derivatives": ["grad", "jacobian", "hessian"]},
        200,
        None,
    ),
    (
        "/v1/activations/relu",
        {"input": {"shape": [0, 1099511627776], "dtype": "float32", "base64": ""}, "jacobian": True},
        413,
        "result_too_large",
    ),
    (
        "/v1/activations/relu",
        {"input": {"shape": [2147483648, 2147483648, 0], "dtype": "float32", "base64": ""}},
        400,
        "invalid_tensor",
    ),
    (
        "/v1/activations/relu",
        {"input": {"shape": [1], "dtype": ["float32"], "base64": "AAAAAA=="}},
        400,
        "invalid_tensor",
    ),
    ("/v1/activations/relu", {"input": -9223372036854775809}, 200, None),
    ("/v1/activations/relu", {"input": 18446744073709551616}, 200, None),
    ("/v1/activations/relu", {"input": ["NaN", [[1.0]]]}, 400, "ragged_array"),
    ("/v1/activations/relu", {"input": [1.0] * 40 + [[5.0]] + [1.0] * 40}, 400, "ragged_array"),
    ("/v1/losses/cross_entropy", {"input": [[1.0, 2.0]], "target": ["Infinity"]}, 400, "invalid_dtype"),
    ("/v1/losses/cross_entropy", {"input": [[1.0, 2.0]], "target": [1e300]}, 400, "invalid_dtype"),
    (
        "/v1/losses/cross_entropy",
        {"input": [[1.0, 2.0]], "target": [1], "params": {"ignore_index": 10**20}},
        422,
        "validation_error",
    ),
    (
        "/v1/losses/binary_cross_entropy_with_logits",
        {"input": [[0.2, 2.0]], "target": [[1.0, 0.0]], "params": {"pos_weight": [[2.0, 1.0]]}},
        200,
        None,
    ),
]


def post_both_ways(client: AppClient, path: str, body: Any) -> list[Any]:
    raw = orjson.dumps(body) if not _has_big_int(body) else _dumps_big(body)
    padded = raw + b" " * (SMALL_BODY_BYTES + 1 - len(raw)) if len(raw) <= SMALL_BODY_BYTES else raw
    small = raw if len(raw) <= SMALL_BODY_BYTES else None
    headers = {"content-type": "application/json"}
    responses = [client.post(path, content=padded, headers=headers)]
    if small is not None:
        responses.append(client.post(path, content=small, headers=headers))
    return responses


def _has_big_int(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_big_int(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_big_int(item) for item in value)
    return isinstance(value, int) and not -(2**63) <= value < 2**64


def _dumps_big(value: Any) -> bytes:
    """JSON for values orjson cannot write (integers past 64 bits), by hand."""
    if isinstance(value, dict):
        return b"{" + b",".join(orjson.dumps(key) + b":" + _dumps_big(item) for key, item in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_dumps_big(item) for item in value) + b"]"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    return orjson.dumps(value)


@pytest.mark.parametrize(("path", "body", "status", "error_type"), CASES)
def test_same_clear_answer_on_both_parser_paths(
    client: AppClient, path: str, body: Any, status: int, error_type: str | None
) -> None:
    responses = post_both_ways(client, path, body)
    for response in responses:
        assert response.status_code == status, response.text
        if error_type is not None:
            assert response.json()["error"]["type"] == error_type, response.text
    if status != 200:
        assert len({response.content for response in responses}) == 1  # the very same error body
    else:
        first = responses[0].json()
        for response in responses[1:]:
            data = response.json()
            assert {key: value for key, value in data.items() if key != "meta"} == {
                key: value for key, value in first.items() if key != "meta"
            }


def test_escaped_bracket_cannot_smuggle_a_ragged_array(client: AppClient) -> None:
    raw = b'{"expression": "sum(x) # \\u005b", "inputs": {"x": [' + b"1.0," * 40 + b"[5.0]," + b"1.0," * 39
    raw += b"1.0]}}" + b" " * 5000
    response = client.post("/v1/differentiate", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "ragged_array"


def test_duplicate_keys_resolve_the_same_way_on_both_paths(client: AppClient) -> None:
    raw = b'{"input": [-1.0], "input": [2.0]}'
    outputs = [
        client.post("/v1/activations/relu", content=body, headers={"content-type": "application/json"}).json()["output"]
        for body in (raw, raw + b" " * 5000)
    ]
    assert outputs == [[2.0], [2.0]]


def test_comparisons_encode_as_integers(client: AppClient) -> None:
    body = {"expression": "x > 0", "inputs": {"x": [1.0, -1.0]}, "encoding": "base64"}
    value = client.post("/v1/differentiate", json=body).json()["value"]
    assert value["dtype"] == "int64"
    assert from_wire(value).tolist() == [1, 0]


def test_losses_weights_get_zero_gradients_in_expressions(client: AppClient) -> None:
    body = {
        "expression": "cross_entropy(x, t, weight=w)",
        "inputs": {"x": [[1, 2], [0.5, 0.1]], "t": [0, 1], "w": [1, 2]},
    }
    grads = client.post("/v1/differentiate", json=body).json()["grad"]
    assert grads["w"] == [0.0, 0.0]
    assert grads["t"] == [0.0, 0.0]
