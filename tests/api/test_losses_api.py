"""POST /v1/losses/{name} and GET /v1/losses over HTTP, generated from the loss registry, plus
every bad input pinned to its status code and error type."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from service.compute.ops.losses import LOSSES, LossSample, LossSpec
from tests import oracles
from tests.compute.test_losses import CASES, CONTRACT_NAMES, TIGHT, Tensors, check_gradients, make_inputs
from tests.conftest import AppClient
from tests.helpers import assert_error, from_wire, to_base64

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# float32 results against the float64 oracle at the float32 inputs: a few float32 roundings apart.
FLOAT32: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-6}


def wire_body(
    spec: LossSpec, sample: LossSample, dtype: torch.dtype, encode: Any = lambda t: t.tolist()
) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, Any]]]:
    input, target, weight, params = make_inputs(spec, sample)
    cast = (
        input.to(dtype),
        None if target is None else (target.to(dtype) if target.is_floating_point() else target),
        None if weight is None else weight.to(dtype),
        {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in params.items()},
    )
    body: dict[str, Any] = {"input": encode(cast[0]), "params": dict(sample.params)}
    if cast[1] is not None:
        body["target"] = encode(cast[1])
    if cast[2] is not None:
        body["weight"] = encode(cast[2])
    return body, cast


def in_float64(tensor: Any) -> Any:
    """A float tensor (or tensor param) exactly in float64; anything else as it is."""
    return tensor.to(torch.float64) if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() else tensor


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_losses_equal_the_oracle(client: AppClient, spec: LossSpec, sample: LossSample, dtype: str) -> None:
    """Only the sample's own params go over the wire and into the oracle, so the server's defaults
    must be the oracle's too."""
    body, (input, target, weight, params) = wire_body(spec, sample, DTYPES[dtype])
    response = client.post(f"/v1/losses/{spec.name}", json={**body, "dtype": dtype})
    assert response.status_code == 200, response.text
    data = response.json()
    tensors: Tensors = {"input": in_float64(input), "target": in_float64(target), "weight": in_float64(weight)}
    sent = {key: in_float64(value) for key, value in params.items() if key in sample.params}
    expected = oracles.LOSSES[spec.name](tensors["input"], tensors["target"], tensors["weight"], **sent)
    loss = from_wire(data["loss"], DTYPES[dtype])
    assert loss.dtype == DTYPES[dtype]
    tolerance = FLOAT32 if dtype == "float32" else TIGHT
    torch.testing.assert_close(loss.to(torch.float64), expected, **tolerance)
    grads = {name: None if grad is None else from_wire(grad, DTYPES[dtype]) for name, grad in data["grad"].items()}
    check_gradients(spec, tensors, sent, torch.ones_like(expected), grads, tolerance)
    assert data["meta"]["dtype"] == dtype


def test_base64_in_and_out(client: AppClient) -> None:
    spec = LOSSES.get("cross_entropy")
    body, (input, target, weight, params) = wire_body(spec, spec.samples[1], torch.float64, encode=to_base64)
    data = client.post("/v1/losses/cross_entropy", json={**body, "dtype": "float64", "encoding": "base64"}).json()
    assert target is not None
    assert data["loss"]["dtype"] == "float64"
    expected = oracles.cross_entropy(input, target, weight, **params)
    torch.testing.assert_close(from_wire(data["loss"]), expected, **TIGHT)


def test_seed_cross_entropy_equals_nll_of_log_softmax(client: AppClient) -> None:
    logits = [[1.0, 2.0, 0.5, -1.0]]
    cross = client.post("/v1/losses/cross_entropy", json={"input": logits, "target": [3], "dtype": "float64"})
    log_softmax = torch.log(torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=1))
    nll = client.post("/v1/losses/nll", json={"input": log_softmax.tolist(), "target": [3], "dtype": "float64"})
    assert cross.json()["loss"] == pytest.approx(nll.json()["loss"], rel=1e-15)


def test_grad_output_for_reduction_none(client: AppClient) -> None:
    body = {
        "input": [1.0, 2.0],
        "target": [0.0, 0.0],
        "params": {"reduction": "none"},
        "grad_output": [1.0, 3.0],
    }
    data = client.post("/v1/losses/mse", json=body).json()
    assert data["loss"] == [1.0, 4.0]
    assert data["grad"]["input"] == [2.0, 12.0]
    assert data["grad"]["target"] == [-2.0, -12.0]


def test_catalog(client: AppClient) -> None:
    items = client.get("/v1/losses").json()["losses"]
    assert [item["name"] for item in items] == [spec.name for spec in LOSSES]
    assert set(CONTRACT_NAMES) <= {item["name"] for item in items}
    by_name = {item["name"]: item for item in items}
    assert by_name["cross_entropy"]["target"] == "float_or_index"
    assert by_name["nll"]["target"] == "index"
    assert by_name["entropy"]["target"] == "none"
    assert by_name["kl_div"]["params"]["properties"]["reduction"]["enum"] == [
        "batchmean",
        "mean",
        "sum",
        "none",
    ]
    assert "label_smoothing" in by_name["cross_entropy"]["params"]["properties"]


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("cross_entropy", {"input": [[1, 2, 3]], "target": [3]}, 400, "class_index_out_of_range"),
    ("cross_entropy", {"input": [[1, 2, 3]], "target": [-2]}, 400, "class_index_out_of_range"),
    ("nll", {"input": [[-1, -2]], "target": [0.5]}, 400, "invalid_dtype"),
    ("nll", {"input": [[-1, -2]], "target": [[0.5, 0.5]]}, 400, "shape_mismatch"),
    ("nll", {"input": [[-1, -2]], "target": [True]}, 400, "not_a_number"),
    ("cross_entropy", {"input": [[1, 2], [3, 4]], "target": [0, 1, 1]}, 400, "shape_mismatch"),
    ("cross_entropy", {"input": [[1, 2]], "target": [0], "weight": [1, 2, 3]}, 400, "shape_mismatch"),
    ("mse", {"input": [1, 2], "target": [1, 2, 3]}, 400, "shape_mismatch"),
    ("mse", {"input": [1, 2]}, 422, "validation_error"),
    ("mse", {"input": [1], "target": [1], "weight": [2]}, 400, "unexpected_weight"),
    ("entropy", {"input": [0.5, 0.5], "target": [1, 0]}, 400, "unexpected_target"),
    ("binary_cross_entropy", {"input": [0.5, 1.5], "target": [1, 0]}, 400, "out_of_range"),
    ("binary_cross_entropy", {"input": [0.5, "NaN"], "target": [1, 0]}, 400, "out_of_range"),
    ("binary_cross_entropy", {"input": [0.5, -0.1], "target": [1, 0]}, 400, "out_of_range"),
    (
        "mse",
        {"input": [1, 2], "target": [1, 2], "params": {"reduction": "none"}, "grad_output": [1]},
        400,
        "shape_mismatch",
    ),
    ("mse", {"input": [1], "target": [1], "device": "cuda:99"}, 400, "device_unavailable"),
    ("hinge", {"input": [1], "target": [1]}, 404, "unknown_loss"),
    ("mse", {"input": [1], "target": [1], "params": {"reduction": "average"}}, 422, "validation_error"),
    ("mse", {"input": [1], "target": [1], "params": {"reduction": "batchmean"}}, 422, "validation_error"),
    ("mse", {"input": [1], "target": [1], "params": {"beta": 1}}, 422, "validation_error"),
    (
        "cross_entropy",
        {"input": [[1, 2]], "target": [0], "params": {"label_smoothing": 2}},
        422,
        "validation_error",
    ),
    (
        "cross_entropy",
        {"input": [[1, 2]], "target": [0], "params": {"ignore_index": 1.5}},
        422,
        "validation_error",
    ),
    ("mse", {"target": [1]}, 422, "validation_error"),
    ("cross_entropy", {"input": [[1, 2]], "target": [0], "params": {"label_smoothing": 1.5}}, 422, "validation_error"),
    ("cross_entropy", {"input": [[1, 2]], "target": [0], "params": {"ignore_index": 2**63}}, 422, "validation_error"),
    ("huber", {"input": [1], "target": [1], "params": {"delta": 0}}, 422, "validation_error"),
    ("smooth_l1", {"input": [1], "target": [1], "params": {"beta": -1}}, 422, "validation_error"),
]


@pytest.mark.parametrize(("name", "body", "status", "error_type"), BAD)
def test_bad_requests(client: AppClient, name: str, body: dict[str, Any], status: int, error_type: str) -> None:
    if error_type == "device_unavailable" and torch.cuda.device_count() > 99:
        pytest.skip("this server has 100 GPUs")
    assert_error(client.post(f"/v1/losses/{name}", json=body), status, error_type)


@pytest.mark.parametrize("spec", [spec for spec in LOSSES if spec.target != "none"], ids=lambda spec: spec.name)
def test_a_loss_that_needs_a_target_and_gets_none_is_a_missing_field(client: AppClient, spec: LossSpec) -> None:
    body, _ = wire_body(spec, spec.samples[0], torch.float64)
    del body["target"]
    error = assert_error(client.post(f"/v1/losses/{spec.name}", json=body), 422, "validation_error")
    assert error["errors"] == [{"loc": ["body", "target"], "msg": "Field required", "type": "missing"}]


@pytest.mark.parametrize(
    ("name", "params", "input", "target", "expected"),
    [
        # torch smooths only with a positive label_smoothing, and takes any eps.
        ("cross_entropy", {"label_smoothing": -0.5}, [[0.0, 0.0]], [0], math.log(2.0)),
        ("poisson_nll", {"log_input": False, "eps": 0.0}, [2.0], [1.0], 2.0 - math.log(2.0)),
        ("poisson_nll", {"log_input": False, "eps": -1.0}, [2.0], [1.0], 2.0),
    ],
)
def test_values_torch_takes_are_computed_as_torch_computes_them(
    client: AppClient, name: str, params: dict[str, Any], input: Any, target: Any, expected: float
) -> None:
    body = {"input": input, "target": target, "params": params, "dtype": "float64"}
    response = client.post(f"/v1/losses/{name}", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["loss"] == pytest.approx(expected, rel=1e-15)


def test_the_server_is_healthy_after_bad_input(client: AppClient) -> None:
    for name, body, _, _ in BAD:
        client.post(f"/v1/losses/{name}", json=body)
    ok = client.post("/v1/losses/cross_entropy", json={"input": [[1, 2, 3]], "target": [2]})
    assert ok.status_code == 200
