"""POST /v1/optimize with a tensor-shaped variable over HTTP: the seed's perceptron weights w
[2, 10] fitted from several starts (each run against torch.optim on a [2, 10] parameter, see
tests/compute/test_optimize_shapes.py), every reported point in the variable's shape (runs,
trajectories, progress events, summaries, known minima), and the refusals."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from service.api.schemas import OptimizeResponse
from tests.api.test_optimize_api import parse_events, wire_number
from tests.compute.test_optimize_shapes import STARTS, TARGET, X, perceptron, seed_loop
from tests.compute.test_optimizer_oracles import FUSED
from tests.conftest import AppClient, ClientFactory
from tests.helpers import assert_error, from_wire, to_base64

PERCEPTRON = {
    "expression": "o = sigmoid(x @ w.T)\nmse(o, y)",
    "variable": "w",
    "inputs": {"x": X.tolist(), "y": TARGET.tolist()},
}
"""The seed's multi-output perceptron, as a formula of its weights w [2, 10]."""

OPTIMIZERS: list[dict[str, Any]] = [
    {"name": "adam", "lr": 0.1},
    {"name": "sgd", "lr": 0.5, "momentum": 0.9},
    {"name": "lbfgs", "max_iter": 5},
]


def fit(starts: Any, **extra: Any) -> dict[str, Any]:
    return {
        "objective": PERCEPTRON,
        "starts": starts,
        "optimizer": OPTIMIZERS,
        "steps": 30,
        "record_every": 10,
        "dtype": "float64",
        **extra,
    }


@pytest.mark.parametrize("encoding", ["json", "base64"])
def test_the_perceptron_fit_from_several_starts_equals_torchs_loops(client: AppClient, encoding: str) -> None:
    starts = STARTS.tolist() if encoding == "json" else to_base64(STARTS)
    response = client.post("/v1/optimize", json=fit(starts, encoding=encoding))
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert [(run["start"], run["optimizer"]["name"]) for run in runs] == [
        (start, choice["name"]) for start in range(3) for choice in OPTIMIZERS
    ]
    for run in runs:
        choice = next(choice for choice in OPTIMIZERS if choice["name"] == run["optimizer"]["name"])
        name, request = choice["name"], {key: value for key, value in choice.items() if key != "name"}
        start = STARTS[run["start"]]
        expected = seed_loop(name, request, perceptron, start, 30, 10, **({"fused": True} if name in FUSED else {}))
        x0, x = from_wire(run["x0"]), from_wire(run["x"])
        assert x0.shape == x.shape == (2, 10)
        assert torch.equal(x0, start)
        tolerance = 0.0 if name == "lbfgs" else 1e-10  # lbfgs: plain autograd, start by start
        torch.testing.assert_close(x, expected.x, rtol=0, atol=tolerance)
        torch.testing.assert_close(
            torch.tensor(wire_number(run["value"]), dtype=torch.float64),
            torch.tensor(expected.value, dtype=torch.float64),
            rtol=0,
            atol=tolerance,
        )
        assert run["trajectory"]["step"] == [0, 10, 20, 30]
        points = torch.stack([from_wire(point) for point in run["trajectory"]["x"]])
        assert points.shape == (4, 2, 10)
        torch.testing.assert_close(points, torch.stack([p for _, p, _ in expected.trajectory]), rtol=0, atol=tolerance)
        assert run["nearest_minimum"] is None
        assert wire_number(run["value"]) < perceptron(start).item()
    assert OptimizeResponse.model_validate(response.json()).runs


def test_one_start_of_the_variables_shape(client: AppClient) -> None:
    body = {"objective": PERCEPTRON, "x0": STARTS[0].tolist(), "optimizer": "sgd", "steps": 3, "dtype": "float64"}
    (run,) = client.post("/v1/optimize", json=body).json()["runs"]
    assert run["x0"] == STARTS[0].tolist()
    assert from_wire(run["x"]).shape == (2, 10)
    expected = seed_loop("sgd", {}, perceptron, STARTS[0], 3, 2_000)
    torch.testing.assert_close(from_wire(run["x"]), expected.x, rtol=0, atol=1e-10)


def test_streamed_progress_keeps_the_variables_shape(client: AppClient) -> None:
    body = fit(STARTS[:2].tolist())
    response = client.post("/v1/optimize", json=body, headers={"accept": "text/event-stream"})
    assert response.status_code == 200
    events = parse_events(response.text)
    kinds = [kind for kind, _ in events]
    assert set(kinds[:-1]) == {"progress"}
    assert kinds[-1] == "result"
    for _, data in events[:-1]:
        for run in data["runs"]:
            assert from_wire(run["x"]).shape == (2, 10)
    first = [run for kind, data in events if kind == "progress" and data["step"] == 0 for run in data["runs"]]
    assert sorted((run["start"], run["optimizer_index"]) for run in first) == [
        (s, k) for s in (0, 1) for k in (0, 1, 2)
    ]
    for run in first:
        assert run["x"] == STARTS[run["start"]].tolist()
    plain = client.post("/v1/optimize", json=body).json()
    assert [run["x"] for run in events[-1][1]["runs"]] == [run["x"] for run in plain["runs"]]
    last = {
        (run["start"], run["optimizer_index"]): run["x"]
        for _, data in events[:-1]
        if data["step"] == 30
        for run in data["runs"]
    }
    assert [last[(run["start"], index % 3)] for index, run in enumerate(plain["runs"])] == [
        run["x"] for run in plain["runs"]
    ]


def test_a_summary_of_tensor_runs(client: AppClient) -> None:
    body = fit(STARTS.tolist(), report="summary", encoding="base64")
    summary = client.post("/v1/optimize", json=body).json()["summary"]
    points = from_wire(summary["x"])
    assert points.shape == (9, 2, 10)
    assert summary["x"]["shape"] == [9, 2, 10]
    assert from_wire(summary["value"]).shape == (9,)
    assert summary["minima"] is None
    runs = client.post("/v1/optimize", json=fit(STARTS.tolist())).json()["runs"]
    assert torch.equal(points, torch.stack([from_wire(run["x"]) for run in runs]))


def test_a_named_objective_of_any_dimension_takes_a_matrix(client: AppClient) -> None:
    """sphere of a [2, 2] variable is the sum of its squares; its minimum and the basins are
    [2, 2] too; rosenbrock of a matrix is rosenbrock of its flattened vector."""
    starts = [[[1.0, 0.0], [0.0, 0.0]], [[3.0, -2.0], [1.0, 1.0]]]
    body = {"objective": "sphere", "starts": starts, "optimizer": "lbfgs", "steps": 5, "dtype": "float64"}
    runs = client.post("/v1/optimize", json=body).json()["runs"]
    for run in runs:
        assert run["nearest_minimum"]["x"] == [[0.0, 0.0], [0.0, 0.0]]
        assert wire_number(run["nearest_minimum"]["distance"]) == float(from_wire(run["x"]).norm())
    summary = client.post("/v1/optimize", json={**body, "report": "summary"}).json()["summary"]
    assert summary["minima"] == [{"x": [[0.0, 0.0], [0.0, 0.0]], "value": 0.0, "count": 2}]
    matrix = {"objective": "rosenbrock", "x0": [[0.5, -0.5], [1.5, 1.2]], "steps": 20, "dtype": "float64"}
    vector = {**matrix, "x0": [0.5, -0.5, 1.5, 1.2]}
    (as_matrix,) = client.post("/v1/optimize", json=matrix).json()["runs"]
    (as_vector,) = client.post("/v1/optimize", json=vector).json()["runs"]
    assert from_wire(as_matrix["x"]).reshape(4).tolist() == as_vector["x"]
    assert as_matrix["value"] == as_vector["value"]
    assert as_matrix["nearest_minimum"]["x"] == [[1.0, 1.0], [1.0, 1.0]]
    assert as_matrix["nearest_minimum"]["distance"] == as_vector["nearest_minimum"]["distance"]


def test_a_three_dimensional_variable(client: AppClient) -> None:
    target = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    body = {
        "objective": {"expression": "sum((x - c) ** 2)", "inputs": {"c": target.tolist()}},
        "starts": torch.zeros(2, 2, 3, 4).tolist(),
        "optimizer": {"name": "sgd", "lr": 0.1},
        "steps": 3,
        "record_every": 1,
        "dtype": "float64",
    }
    runs = client.post("/v1/optimize", json=body).json()["runs"]
    for run in runs:
        assert [from_wire(point).shape for point in run["trajectory"]["x"]] == [(2, 3, 4)] * 4
        torch.testing.assert_close(from_wire(run["x"]), target * (1 - 0.8**3), rtol=0, atol=1e-12)


def test_the_openapi_example_fits_the_perceptron(client: AppClient) -> None:
    examples = client.get("/openapi.json").json()["components"]["schemas"]["OptimizeRequest"]["examples"]
    (example,) = [example for example in examples if isinstance(example.get("x0", [0])[0], list)]
    (run,) = client.post("/v1/optimize", json=example).json()["runs"]
    assert from_wire(run["x"]).shape == (2, 10)
    assert run["trajectory"]["step"] == [0, 50, 100, 150, 200]
    assert wire_number(run["value"]) < 1e-3 < wire_number(run["trajectory"]["value"][0])


W0 = [[0.0] * 10] * 2
BAD: list[tuple[dict[str, Any], int, str]] = [
    # Starts of another trailing shape than the formula multiplies: torch's refusal, a 400.
    ({"objective": PERCEPTRON, "starts": [[[0.0] * 9] * 2] * 2}, 400, "computation_failed"),
    ({"objective": PERCEPTRON, "starts": [[[0.0] * 2] * 10] * 2, "optimizer": "lbfgs"}, 400, "computation_failed"),
    # A named objective of a fixed dimension takes a point [d] alone.
    ({"objective": "himmelblau", "x0": [[1.0, 0.0]]}, 400, "shape_mismatch"),
    ({"objective": "himmelblau", "starts": [[[1.0], [0.0]], [[2.0], [0.0]]]}, 400, "shape_mismatch"),
    ({"objective": "beale", "x0": W0}, 400, "shape_mismatch"),
    # x0 and starts are one or the other, whatever their shapes.
    ({"objective": PERCEPTRON, "x0": W0, "starts": [[0.0] * 3]}, 400, "invalid_input"),
    ({"objective": PERCEPTRON, "x0": W0, "starts": [W0]}, 400, "invalid_input"),
    # Ragged at any depth.
    ({"objective": PERCEPTRON, "x0": [[0.0] * 10, [0.0] * 9]}, 400, "ragged_array"),
    ({"objective": PERCEPTRON, "starts": [W0, [[0.0] * 10, [0.0] * 9]]}, 400, "ragged_array"),
    ({"objective": PERCEPTRON, "starts": [W0, [[0.0] * 10]]}, 400, "ragged_array"),
    # A variable has at least one dimension and one element.
    ({"objective": PERCEPTRON, "x0": 0.5}, 400, "shape_mismatch"),
    ({"objective": PERCEPTRON, "x0": [[]]}, 400, "shape_mismatch"),
    ({"objective": PERCEPTRON, "starts": [[[]]]}, 400, "shape_mismatch"),
    # The value must be a scalar.
    ({"objective": {**PERCEPTRON, "expression": "sigmoid(x @ w.T)"}, "x0": W0}, 400, "not_scalar"),
]


@pytest.mark.parametrize(("body", "status", "error_type"), BAD)
def test_bad_tensor_starts(client: AppClient, body: dict[str, Any], status: int, error_type: str) -> None:
    assert_error(client.post("/v1/optimize", json={"steps": 2, **body}), status, error_type)


def test_size_limits_count_every_element_of_a_tensor_start(make_client: ClientFactory) -> None:
    limited = make_client(max_elements=2_000)
    starts = torch.zeros(101, 2, 10).tolist()  # 2,020 elements
    error = assert_error(limited.post("/v1/optimize", json=fit(starts, optimizer="adam")), 413, "too_many_elements")
    assert error["limit"] == 2_000
    small = fit(torch.zeros(4, 2, 10).tolist(), optimizer="adam", steps=24, record_every=1)  # 4 x 26 points x 20
    assert_error(limited.post("/v1/optimize", json=small), 413, "trajectory_too_long")
    assert limited.post("/v1/optimize", json={**small, "report": "summary"}).status_code == 200
    lbfgs = fit(torch.zeros(4, 2, 10).tolist(), optimizer={"name": "lbfgs", "history_size": 13}, steps=1)
    assert_error(limited.post("/v1/optimize", json=lbfgs), 413, "state_too_large")  # 2 x 13 x 4 x 20
