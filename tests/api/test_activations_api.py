"""POST /v1/activations/{name} and the catalog, generated from the registry, plus every bad input
pinned to its status code and error type."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import torch

from service.compute.ops.activations import ACTIVATIONS, ActivationSample, ActivationSpec
from tests import oracles
from tests.compute.test_activations import (
    CASES,
    CONTRACT_NAMES,
    TIGHT,
    assert_derivative,
    oracle_second_derivative,
    oracle_vjp,
    prefixed,
    sample_input,
)
from tests.conftest import AppClient, ClientFactory
from tests.helpers import assert_error, from_wire, to_base64

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# float32 results against the float64 oracle at the float32 input: a few float32 roundings apart.
FLOAT32: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_values_and_grads_equal_the_oracle(
    client: AppClient, spec: ActivationSpec, sample: ActivationSample, dtype: str
) -> None:
    """Only the sample's own params go over the wire and into the oracle, so the server's defaults
    must be the oracle's too."""
    x = sample_input(sample).to(DTYPES[dtype])
    body = {"input": x.tolist(), "params": dict(sample.params), "dtype": dtype, "jacobian": True}
    response = client.post(f"/v1/activations/{spec.name}", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    oracle = oracles.ACTIVATIONS[spec.name]

    def fn(t: torch.Tensor) -> torch.Tensor:
        return oracle(t, **sample.params)

    exact = x.to(torch.float64)  # the float32 input, exactly
    output, grad = fn(exact), oracle_vjp(fn, exact, torch.ones_like(exact))
    jacobian = torch.autograd.functional.jacobian(fn, exact)
    results = {key: from_wire(data[key], DTYPES[dtype]) for key in ("output", "grad", "jacobian")}
    assert all(result.dtype == DTYPES[dtype] for result in results.values())
    if dtype == "float32":
        for key, expected in (("output", output), ("grad", grad), ("jacobian", jacobian)):
            torch.testing.assert_close(results[key].to(torch.float64), expected, **FLOAT32, msg=prefixed(key))
    else:
        torch.testing.assert_close(results["output"], output, **TIGHT)
        assert_derivative(results["grad"], grad, spec.name, dict(sample.params), "grad")
        assert_derivative(results["jacobian"], jacobian, spec.name, dict(sample.params), "jacobian")
    assert data["meta"]["device"] == "cpu" and data["meta"]["dtype"] == dtype
    assert data["grad2"] is None


@pytest.mark.parametrize("spec", [spec for spec in ACTIVATIONS if spec.elementwise], ids=lambda s: s.name)
def test_second_order_in_base64(client: AppClient, spec: ActivationSpec) -> None:
    """f, f' and f'' at the defaults (no params sent), against the oracle's values."""
    x = torch.linspace(-4, 4, 7, dtype=torch.float64) + 0.1
    body = {"input": to_base64(x), "dtype": "float64", "encoding": "base64", "second_order": True}
    response = client.post(f"/v1/activations/{spec.name}", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["output"]["dtype"] == "float64" and data["output"]["shape"] == [7]
    assert data["grad2"]["dtype"] == "float64" and data["grad2"]["shape"] == [7]
    oracle = oracles.ACTIVATIONS[spec.name]
    torch.testing.assert_close(from_wire(data["output"]), oracle(x), **TIGHT)
    assert_derivative(from_wire(data["grad"]), oracle_vjp(oracle, x, torch.ones_like(x)), spec.name, {}, "grad")
    assert_derivative(from_wire(data["grad2"]), oracle_second_derivative(oracle, x), spec.name, {}, "grad2")


def test_grad_output_gives_the_vjp(client: AppClient) -> None:
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, 2.0, -3.0]], dtype=torch.float64)
    body = {"input": x.tolist(), "grad_output": g.tolist(), "dtype": "float64", "params": {"dim": 1}}
    data = client.post("/v1/activations/log_softmax", json=body).json()
    expected = oracle_vjp(lambda t: oracles.log_softmax(t, dim=1), x, g)
    torch.testing.assert_close(from_wire(data["grad"]), expected, **TIGHT)


def test_seed_softmax_jacobian(client: AppClient) -> None:
    a = [0.2, 0.5, 0.9]
    data = client.post(
        "/v1/activations/softmax",
        json={"input": a, "params": {"dim": 0}, "jacobian": True, "dtype": "float64"},
    ).json()
    leaf = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    (row,) = torch.autograd.grad(oracles.softmax(leaf, dim=0)[1], [leaf])
    torch.testing.assert_close(from_wire(data["jacobian"])[1], row, **TIGHT)


def test_non_finite_values_travel_as_strings(client: AppClient) -> None:
    body = {"input": ["NaN", "Infinity", "-Infinity", 0.0], "second_order": True}
    response = client.post("/v1/activations/sigmoid", json=body)
    assert b"NaN," in response.content or b'"NaN"' in response.content
    data = orjson.loads(response.content)  # strict JSON: orjson refuses bare NaN tokens
    assert data["output"] == ["NaN", 1.0, 0.0, 0.5]
    assert data["grad"][0] == "NaN"


def test_catalog_lists_every_registered_activation(client: AppClient) -> None:
    data = client.get("/v1/activations").json()
    names = [item["name"] for item in data["activations"]]
    assert names == [spec.name for spec in ACTIVATIONS]
    assert set(CONTRACT_NAMES) <= set(names)
    by_name = {item["name"]: item for item in data["activations"]}
    assert by_name["softmax"]["elementwise"] is False
    assert by_name["leaky_relu"]["params"]["properties"]["negative_slope"]["default"] == 0.01
    assert by_name["gelu"]["params"]["properties"]["approximate"]["enum"] == ["none", "tanh"]
    assert all(item["formula"] for item in data["activations"])


BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("sigmoid", {"input": [[1, 2], [3]]}, 400, "ragged_array"),
    ("sigmoid", {"input": [1, "x"]}, 400, "not_a_number"),
    ("sigmoid", {"input": [1, True]}, 400, "not_a_number"),
    ("sigmoid", {"input": {"shape": [3], "dtype": "float32", "base64": "AAAA"}}, 400, "invalid_base64"),
    ("sigmoid", {"input": {"shape": [1], "dtype": "float32", "base64": "@@@@"}}, 400, "invalid_base64"),
    ("sigmoid", {"input": {"shape": [1], "dtype": "bf16", "base64": "AAAA"}}, 400, "invalid_tensor"),
    ("sigmoid", {"input": [1], "grad_output": [1, 2]}, 400, "shape_mismatch"),
    ("softmax", {"input": [1, 2], "second_order": True}, 400, "not_elementwise"),
    ("softmax", {"input": [1, 2], "params": {"dim": 1}}, 400, "invalid_param"),
    ("hardtanh", {"input": [1], "params": {"min_val": 2, "max_val": 1}}, 422, "validation_error"),
    ("nope", {"input": [1]}, 404, "unknown_activation"),
    ("sigmoid", {}, 422, "validation_error"),
    ("sigmoid", {"input": [1], "dtype": "float16"}, 422, "validation_error"),
    ("sigmoid", {"input": [1], "dtype": "int64"}, 422, "validation_error"),
    ("sigmoid", {"input": [1], "device": "tpu"}, 422, "validation_error"),
    ("sigmoid", {"input": [1], "encoding": "hex"}, 422, "validation_error"),
    ("sigmoid", {"input": [1], "second_order": "yes"}, 422, "validation_error"),
    ("sigmoid", {"input": [1], "unknown": 1}, 422, "validation_error"),
    ("sigmoid", {"input": [1], "params": {"alpha": 1}}, 422, "validation_error"),
    ("elu", {"input": [1], "params": {"alpha": "big"}}, 422, "validation_error"),
    ("gelu", {"input": [1], "params": {"approximate": "fast"}}, 422, "validation_error"),
    ("softshrink", {"input": [1], "params": {"lambd": -1}}, 422, "validation_error"),
    ("celu", {"input": [1], "params": {"alpha": 0}}, 422, "validation_error"),
    ("leaky_relu", {"input": [1], "params": {"negative_slope": 1e39}}, 422, "validation_error"),
    ("softmax", {"input": [1], "params": {"dim": 0.5}}, 422, "validation_error"),
]


@pytest.mark.parametrize(("name", "body", "status", "error_type"), BAD_REQUESTS)
def test_bad_requests(client: AppClient, name: str, body: Any, status: int, error_type: str) -> None:
    assert_error(client.post(f"/v1/activations/{name}", json=body), status, error_type)


def test_validation_errors_list_locations_without_echoing_input(client: AppClient) -> None:
    error = assert_error(
        client.post("/v1/activations/elu", json={"input": [1], "params": {"alpha": "x"}}),
        422,
        "validation_error",
    )
    assert error["errors"][0]["loc"] == ["body", "params", "alpha"]
    assert "input" not in error["errors"][0]


def test_malformed_json(client: AppClient) -> None:
    response = client.post(
        "/v1/activations/sigmoid", content=b'{"input": [1,', headers={"content-type": "application/json"}
    )
    assert "position" in assert_error(response, 400, "invalid_json")


def test_body_that_is_not_json(client: AppClient) -> None:
    response = client.post("/v1/activations/sigmoid", content=b"input=1")
    assert_error(response, 415, "unsupported_media_type")


def test_unknown_route_and_method(client: AppClient) -> None:
    assert_error(client.get("/v9/nothing"), 404, "not_found")  # (under /v2 the Open Inference Protocol answers)
    assert_error(client.request("DELETE", "/v1/activations"), 405, "method_not_allowed")
    # A compute route asked with the wrong method passes the compute lane on to the router.
    assert_error(client.get("/v1/activations/sigmoid"), 405, "method_not_allowed")
    assert_error(client.post("/v1/activations/sigmoid/more", json={"input": 1}), 404, "not_found")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this server has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_asked_for_but_absent(client: AppClient, device: str) -> None:
    error = assert_error(
        client.post("/v1/activations/relu", json={"input": [1], "device": device}), 400, "device_unavailable"
    )
    assert error["available"] == ["cpu"]


def test_limits(make_client: ClientFactory) -> None:
    limited = make_client(max_elements=10, max_jacobian_elements=16, max_body_bytes=2048)
    ok = limited.post("/v1/activations/relu", json={"input": [1.0] * 10})
    assert ok.status_code == 200
    over = limited.post("/v1/activations/relu", json={"input": [1.0] * 6, "grad_output": [1.0] * 6})
    assert assert_error(over, 413, "too_many_elements")["limit"] == 10
    jacobian = limited.post("/v1/activations/relu", json={"input": [1.0] * 5, "jacobian": True})
    assert_error(jacobian, 413, "jacobian_too_large")
    body = limited.post("/v1/activations/relu", json={"input": [1.0] * 1000})
    assert_error(body, 413, "body_too_large")


def test_chunked_body_over_the_limit(make_client: ClientFactory) -> None:
    limited = make_client(max_body_bytes=4096)

    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1024

    response = limited.post("/v1/activations/relu", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "body_too_large")


def test_a_tangent_gives_the_jacobian_vector_product(client: AppClient) -> None:
    x = [1.0, 2.0, 3.0]
    body = {"input": x, "params": {"dim": 0}, "tangent": [1.0, 0.0, 0.0], "dtype": "float64", "jacobian": True}
    data = client.post("/v1/activations/softmax", json=body).json()
    jacobian = torch.tensor(data["jacobian"], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(data["jvp"], dtype=torch.float64), jacobian[:, 0], rtol=1e-12, atol=1e-12)
    plain = client.post("/v1/activations/softmax", json={"input": x, "params": {"dim": 0}}).json()
    assert plain["jvp"] is None


def test_a_tangent_of_another_shape_is_a_400(client: AppClient) -> None:
    body = {"input": [1.0, 2.0, 3.0], "tangent": [1.0, 0.0]}
    error = assert_error(client.post("/v1/activations/tanh", json=body), 400, "shape_mismatch")
    assert error["where"] == "tangent"
