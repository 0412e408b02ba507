"""POST /v1/differentiate and GET /v1/functions over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.compute.ops.activations import ACTIVATIONS
from service.compute.ops.losses import LOSSES
from tests.compute.test_expressions import DTYPE_REFUSALS, FUZZED_SOURCES, HIMMELBLAU, REFUSED
from tests.conftest import AppClient, ClientFactory
from tests.helpers import assert_error, examples, from_wire, to_base64


def test_seed_perceptron_over_http(client: AppClient) -> None:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 10, generator=generator, dtype=torch.float64)
    w = torch.randn(2, 10, generator=generator, dtype=torch.float64)
    body = {
        "expression": "o = sigmoid(x @ w.T)\nmse(ones_like(o), o)",
        "inputs": {"x": x.tolist(), "w": to_base64(w)},
        "wrt": ["w"],
        "dtype": "float64",
    }
    data = client.post("/v1/differentiate", json=body).json()
    leaf = w.clone().requires_grad_(True)
    F.mse_loss(torch.ones(1, 2, dtype=torch.float64), torch.sigmoid(x @ leaf.t())).backward()
    assert leaf.grad is not None
    assert torch.equal(from_wire(data["grad"]["w"]), leaf.grad)
    assert data["jacobian"] is None
    assert data["hessian"] is None
    assert data["meta"]["dtype"] == "float64"


def test_himmelblau_gradient_and_hessian_in_base64(client: AppClient) -> None:
    body = {
        "expression": HIMMELBLAU,
        "inputs": {"x": [3.0, 2.0]},
        "derivatives": ["grad", "jacobian", "hessian"],
        "encoding": "base64",
    }
    data = client.post("/v1/differentiate", json=body).json()
    assert from_wire(data["value"]).item() == 0.0
    assert torch.equal(from_wire(data["grad"]["x"]), torch.zeros(2))
    hessian = from_wire(data["hessian"]["x"]["x"])
    torch.testing.assert_close(hessian, torch.tensor([[74.0, 20.0], [20.0, 34.0]]))


def hessian_formula(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The formula of the test below, in torch."""
    h = torch.tanh(w @ x)
    norm: torch.Tensor = torch.linalg.vector_norm(x, ord=3)
    return torch.sum(h**2) + norm * s + torch.logsumexp(w, dim=0)[1]


@pytest.mark.parametrize("encoding", ["json", "base64"])
def test_every_derivative_block_over_http_equals_torch(client: AppClient, encoding: str) -> None:
    """Value, gradient, Jacobian and every Hessian block of a three-input formula, by value, in
    float64, against autograd through the same formula written in torch."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(3, generator=generator, dtype=torch.float64)
    w = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    s = torch.tensor(0.75, dtype=torch.float64)
    body = {
        "expression": "h = tanh(W @ x)\nsum(h ** 2) + norm(x, p=3) * s + logsumexp(W, dim=0)[1]",
        "inputs": {"x": x.tolist(), "W": to_base64(w), "s": 0.75},
        "derivatives": ["grad", "jacobian", "hessian"],
        "dtype": "float64",
        "encoding": encoding,
    }
    response = client.post("/v1/differentiate", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    xs = (x, w, s)
    names = ["x", "W", "s"]
    argnums = (0, 1, 2)
    grads = torch.func.grad(hessian_formula, argnums=argnums)(*xs)
    hessians = torch.func.jacrev(torch.func.jacrev(hessian_formula, argnums=argnums), argnums=argnums)(*xs)
    close: dict[str, Any] = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(from_wire(data["value"]), hessian_formula(*xs), **close)
    assert set(data["hessian"]) == set(names)
    for i, name in enumerate(names):
        torch.testing.assert_close(from_wire(data["grad"][name]), grads[i], **close)
        torch.testing.assert_close(from_wire(data["jacobian"][name]), grads[i], **close)
        assert set(data["hessian"][name]) == set(names)
        for j, other in enumerate(names):
            torch.testing.assert_close(from_wire(data["hessian"][name][other]), hessians[i][j], **close)


def test_integer_inputs_stay_integers(client: AppClient) -> None:
    body = {
        "expression": "cross_entropy(z, t)",
        "inputs": {"z": [[1.0, 2.0, 3.0]], "t": to_base64(torch.tensor([2]))},
        "dtype": "float64",
    }
    data = client.post("/v1/differentiate", json=body).json()
    assert list(data["grad"]) == ["z"]
    z = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    expected = F.cross_entropy(z, torch.tensor([2]))
    (grad,) = torch.autograd.grad(expected, z)
    assert data["value"] == pytest.approx(expected.item(), rel=1e-15)
    torch.testing.assert_close(from_wire(data["grad"]["z"]), grad, rtol=1e-15, atol=1e-15)


def test_functions_catalog(client: AppClient) -> None:
    data = client.get("/v1/functions").json()
    names = {item["name"] for item in data["functions"]}
    assert {spec.name for spec in ACTIVATIONS} <= names
    assert {spec.name for spec in LOSSES} <= names
    assert {"exp", "where", "reshape", "logsumexp"} <= names
    by_name = {item["name"]: item for item in data["functions"]}
    assert by_name["gelu"]["signature"] == "gelu(x: tensor, approximate: str in none|tanh = 'none')"
    assert by_name["reshape"]["signature"] == "reshape(x: tensor, *shape: int)"
    assert "**" in data["operators"]


@pytest.mark.parametrize("source", REFUSED[:30])
def test_refused_expressions_are_400s_with_a_position(client: AppClient, source: str) -> None:
    response = client.post("/v1/differentiate", json={"expression": source, "inputs": {"x": [1.0]}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"]
    assert "line" in error


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"expression": "x" * 20_000, "inputs": {"x": 1}}, 413, "expression_too_long"),
        ({"expression": "x * 2", "inputs": {"x": [1, 2]}, "derivatives": ["hessian"]}, 400, "not_scalar"),
        ({"expression": "x", "inputs": {"x": 1}, "wrt": ["y"]}, 400, "unknown_name"),
        ({"expression": "x @ y", "inputs": {"x": [1, 2], "y": [1, 2, 3]}}, 400, "computation_failed"),
        ({"expression": "y", "inputs": {"x": 1}}, 400, "unknown_name"),
        ({"expression": "x", "inputs": {"x": [[1], [2, 3]]}}, 400, "ragged_array"),
        ({"expression": "x ** 2", "inputs": {"x": [1, 2]}, "grad_output": [1]}, 400, "shape_mismatch"),
        ({"expression": "x", "inputs": {"x": 1}, "derivatives": ["laplacian"]}, 422, "validation_error"),
        ({"inputs": {"x": 1}}, 422, "validation_error"),
        ({"expression": 5, "inputs": {"x": 1}}, 422, "validation_error"),
    ],
)
def test_bad_requests(client: AppClient, body: dict[str, object], status: int, error_type: str) -> None:
    assert_error(client.post("/v1/differentiate", json=body), status, error_type)


def test_jacobian_limit_is_a_413(make_client: ClientFactory) -> None:
    limited = make_client(max_jacobian_elements=50, expression_max_length=40)
    body = {"expression": "x * 2", "inputs": {"x": [1.0] * 10}, "derivatives": ["jacobian"]}
    assert_error(limited.post("/v1/differentiate", json=body), 413, "jacobian_too_large")
    long = {"expression": "x" + " + x" * 20, "inputs": {"x": 1.0}}
    assert_error(limited.post("/v1/differentiate", json=long), 413, "expression_too_long")
    info = limited.get("/v1/info").json()["limits"]
    assert info["expression_max_length"] == 40
    assert info["max_jacobian_elements"] == 50


FUZZ_BODY_INPUTS = {
    "x": [0.5, -1.5],
    "y": [[1.0, 2.0], [3.0, 4.0]],
    "s": 0.25,
    "t": to_base64(torch.tensor([1, 0])),
}


def assert_clean_answer(response: httpx.Response) -> None:
    """A result, or a client error with the contract's error body: never a 5xx."""
    assert response.status_code in (200, 400, 404, 413, 422), response.text
    if response.status_code == 200:
        assert set(response.json()) >= {"value", "grad", "jacobian", "hessian"}, response.text
    else:
        assert_error(response, response.status_code, response.json()["error"]["type"])


@pytest.mark.parametrize("source", DTYPE_REFUSALS)
def test_booleans_or_integers_where_floats_are_needed_are_400s(client: AppClient, source: str) -> None:
    body = {"expression": source, "inputs": FUZZ_BODY_INPUTS}
    response = client.post("/v1/differentiate", json=body)
    assert_clean_answer(response)
    assert response.status_code == 400, response.text


FUZZ_DERIVATIVES = [["grad"], ["grad", "jacobian"], ["hessian"], ["jvp"], ["grad", "hvp"]]
FUZZ_BATCHES = [None, None, ["x"], ["x", "t"], ["y"], ["s"]]


@settings(max_examples=examples(150), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(FUZZED_SOURCES, st.sampled_from(FUZZ_DERIVATIVES), st.booleans(), st.sampled_from(FUZZ_BATCHES))
def test_fuzzed_expressions_over_http_never_5xx(
    client: AppClient, source: str, derivatives: list[str], dry_run: bool, batch: list[str] | None
) -> None:
    body: dict[str, Any] = {"expression": source, "inputs": FUZZ_BODY_INPUTS, "derivatives": derivatives}
    body |= {"dtype": "float64", "dry_run": dry_run, "batch": batch}
    if {"jvp", "hvp"} & set(derivatives):
        body["tangents"] = {"x": [1.0, 0.5]}
    response = client.post("/v1/differentiate", json=body, headers={"content-type": "application/json"})
    assert_clean_answer(response)
    event(str(response.status_code))


# --- Forward mode, Hessian-vector products, batches, dry runs and the compute limit.

HIMMELBLAU_AT_MINIMUM = {"expression": HIMMELBLAU, "inputs": {"x": [3.0, 2.0]}, "dtype": "float64"}


def test_jvp_and_hvp_over_http(client: AppClient) -> None:
    body = {**HIMMELBLAU_AT_MINIMUM, "derivatives": ["jvp", "hvp"], "tangents": {"x": [1.0, 0.0]}}
    data = client.post("/v1/differentiate", json=body).json()
    assert data["jvp"] == 0.0
    assert data["hvp"] == {"x": [74.0, 20.0]}
    assert data["grad"] is None and data["hessian"] is None and data["cost"] is None


def test_a_batch_in_base64_equals_torch_func_vmap(client: AppClient) -> None:
    generator = torch.Generator().manual_seed(11)
    points = torch.rand(1_000, 2, generator=generator, dtype=torch.float64) * 10 - 5
    tangents = torch.randn(1_000, 2, generator=generator, dtype=torch.float64)
    body = {
        "expression": HIMMELBLAU,
        "inputs": {"x": to_base64(points)},
        "batch": ["x"],
        "derivatives": ["grad", "hessian", "jvp", "hvp"],
        "tangents": {"x": to_base64(tangents)},
        "dtype": "float64",
        "encoding": "base64",
    }
    data = client.post("/v1/differentiate", json=body).json()

    def himmelblau(x: torch.Tensor) -> torch.Tensor:
        return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2

    hessians = torch.func.vmap(torch.func.hessian(himmelblau))(points)
    assert torch.equal(from_wire(data["value"]), torch.func.vmap(himmelblau)(points))
    torch.testing.assert_close(from_wire(data["grad"]["x"]), torch.func.vmap(torch.func.grad(himmelblau))(points))
    torch.testing.assert_close(from_wire(data["hessian"]["x"]["x"]), hessians, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(from_wire(data["hvp"]["x"]), torch.einsum("bij,bj->bi", hessians, tangents))
    jvp = torch.func.vmap(lambda p, t: torch.func.jvp(himmelblau, (p,), (t,))[1])(points, tangents)
    torch.testing.assert_close(from_wire(data["jvp"]), jvp, rtol=1e-12, atol=1e-12)


def test_a_dry_run_answers_shapes_dtypes_and_cost(client: AppClient) -> None:
    body = {
        "expression": "sum(W @ W @ W)",
        "inputs": {"W": [[1.0, 2.0], [3.0, 4.0]]},
        "derivatives": ["grad", "hessian", "jvp"],
        "tangents": {"W": [[1.0, 0.0], [0.0, 0.0]]},
        "dry_run": True,
    }
    data = client.post("/v1/differentiate", json=body).json()
    assert data["value"] == {"shape": [], "dtype": "float32"}
    assert data["grad"] == {"W": {"shape": [2, 2], "dtype": "float32"}}
    assert data["hessian"] == {"W": {"W": {"shape": [2, 2, 2, 2], "dtype": "float32"}}}
    assert data["jvp"] == {"shape": [], "dtype": "float32"}
    assert set(data["cost"]) == {"flops", "bytes"}
    assert data["cost"]["flops"] >= 2 * 2 * 2**3  # the two forward products alone
    assert data["cost"]["bytes"] >= 2 * 4 * 4  # W and its tangent in float32


def test_over_the_compute_limit_is_a_413_before_anything_runs(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = make_client(max_flops=1_000_000, compute_processes=0)
    body = {"expression": "sum(W @ W @ W)", "inputs": {"W": to_base64(torch.ones(100, 100))}}

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("computed despite the limit")

    monkeypatch.setattr("service.api.routes.differentiate.differentiate", must_not_run)
    error = assert_error(limited.post("/v1/differentiate", json=body), 413, "compute_too_large")
    assert error["limit"] == 1_000_000
    assert error["estimate"] >= 2 * 2 * 100**3
    assert str(error["estimate"]) in error["message"]
    dry = limited.post("/v1/differentiate", json={**body, "dry_run": True}).json()
    assert dry["cost"]["flops"] == error["estimate"]  # a dry run tells it without refusing
    assert limited.get("/v1/info").json()["limits"]["max_flops"] == 1_000_000


POINTS = {"x": [[3.0, 2.0], [0.0, 0.0]]}


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"inputs": {"x": [3.0, 2.0]}, "derivatives": ["jvp"], "tangents": {"x": [1.0]}}, "shape_mismatch"),
        ({"inputs": {"x": [3.0, 2.0]}, "derivatives": ["hvp"]}, "missing_tangents"),
        ({"inputs": {"x": [3.0, 2.0]}, "tangents": {"x": [1.0, 0.0]}}, "invalid_tangents"),
        ({"inputs": POINTS, "derivatives": ["hvp"], "tangents": {"x": [1.0, 0.0]}}, "shape_mismatch"),
        ({"inputs": {"x": 1.0}, "batch": ["x"]}, "invalid_batch"),
        ({"inputs": {**POINTS, "y": [1.0, 2.0, 3.0]}, "batch": ["x", "y"]}, "batch_mismatch"),
        ({"inputs": POINTS, "batch": ["z"]}, "unknown_name"),
        ({"inputs": POINTS, "batch": ["x"], "grad_output": [1.0]}, "shape_mismatch"),
        ({"inputs": {"x": [3.0, 2.0]}, "tangents": {"x": [[1.0, 0.0]]}, "derivatives": ["jvp"]}, "shape_mismatch"),
    ],
)
def test_bad_derivative_requests_are_400s(client: AppClient, body: dict[str, Any], error_type: str) -> None:
    response = client.post("/v1/differentiate", json={"expression": HIMMELBLAU, **body})
    assert_error(response, 400, error_type)


def test_hvp_of_a_vector_value_is_a_400(client: AppClient) -> None:
    body = {"expression": "x * 2", "inputs": {"x": [1.0, 2.0]}, "derivatives": ["hvp"], "tangents": {"x": [1, 1]}}
    assert_error(client.post("/v1/differentiate", json=body), 400, "not_scalar")


def test_new_fields_are_validated_by_the_schema(client: AppClient) -> None:
    for extra in ({"batch": "x"}, {"dry_run": "yes"}, {"tangents": [1.0]}, {"derivatives": ["vjp"]}):
        response = client.post("/v1/differentiate", json={**HIMMELBLAU_AT_MINIMUM, **extra})
        assert_error(response, 422, "validation_error")


def test_every_openapi_example_of_differentiate_computes(client: AppClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["DifferentiateRequest"]
    assert len(schema["examples"]) >= 5
    for example in schema["examples"]:
        response = client.post("/v1/differentiate", json=example)
        assert response.status_code == 200, (example, response.text)
        data = response.json()
        for derivative in example.get("derivatives", ["grad"]):
            assert data[derivative] is not None, (example, derivative)
        assert (data["cost"] is not None) == example.get("dry_run", False)
