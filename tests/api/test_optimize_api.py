"""/v1/objectives, /v1/optimizers, /v1/optimize and /v1/landscape over HTTP."""

from __future__ import annotations

import math
import shutil
import time
from typing import Any

import orjson
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.schemas import LandscapeResponse, ObjectiveCatalog, OptimizerCatalog, OptimizeResponse
from service.compute.optimisation.objectives import OBJECTIVES
from service.compute.optimisation.optimizers import OPTIMIZERS
from tests.compute.test_optimizer_oracles import (
    FUSED,
    STARTS,
    TORCH_CLASSES,
    Expected,
    close,
    reference_runs,
    requests,
    schedules,
)
from tests.conftest import AppClient, ClientFactory
from tests.helpers import NON_FINITE, assert_error, examples, from_wire, to_base64


def test_catalogs(client: AppClient) -> None:
    objectives = client.get("/v1/objectives").json()["objectives"]
    assert [item["name"] for item in objectives] == [objective.name for objective in OBJECTIVES]
    himmelblau = objectives[0]
    assert himmelblau["dimension"] == 2
    assert len(himmelblau["minima"]) == 4
    assert himmelblau["domain"] == [[-6.0, 6.0], [-6.0, 6.0]]
    optimizers = client.get("/v1/optimizers").json()["optimizers"]
    assert [item["name"] for item in optimizers] == [spec.name for spec in OPTIMIZERS]
    adam = optimizers[1]["params"]["properties"]
    assert adam["lr"]["default"] == 0.001
    assert adam["betas"]["default"] == [0.9, 0.999]


def assert_names_its_nearest_minimum(run: dict[str, Any], x: list[float]) -> None:
    """The run names one of Himmelblau's known minima, at the least Euclidean distance from its x
    (computed here from the known minima), and that distance."""
    minima = OBJECTIVES.get("himmelblau").minima(2)
    named = run["nearest_minimum"]
    assert (named["x"], named["value"]) in minima
    distance = wire_number(named["distance"])
    assert distance == math.dist(x, named["x"])
    assert distance == min(math.dist(x, point) for point, _ in minima)


def wire_number(value: float | str) -> float:
    return NON_FINITE[value] if isinstance(value, str) else value


def assert_run_is(run: dict[str, Any], expected: Expected) -> None:
    """A run on the wire (float64, JSON) is bitwise the reference's, and names its nearest minimum."""
    assert (run["stopped"], run["steps"]) == (expected.stopped, expected.steps)
    x = from_wire(run["x"])
    close(x, expected.x)
    close(wire_number(run["value"]), expected.value)
    close(wire_number(run["grad_norm"]), expected.grad_norm)
    assert run["trajectory"]["step"] == [step for step, _, _ in expected.trajectory]
    close(
        torch.stack([from_wire(point) for point in run["trajectory"]["x"]]),
        torch.stack([p for _, p, _ in expected.trajectory]),
    )
    close([wire_number(value) for value in run["trajectory"]["value"]], [value for _, _, value in expected.trajectory])
    if torch.isfinite(x).all():
        assert_names_its_nearest_minimum(run, x.tolist())


def expected_runs(body: dict[str, Any], starts: torch.Tensor) -> list[Expected]:
    """torch's loops of each optimizer in the request body, ordered as the response's runs (by
    start, then optimizer). Adam and AdamW run torch's fused kernel over all the starts as one
    parameter, as the service does (see test_optimizer_oracles); the others one loop per start."""
    fn, steps, record_every = OBJECTIVES.get("himmelblau").fn, body["steps"], body["record_every"]
    per_optimizer = []
    for choice in body["optimizer"]:
        name, request = choice["name"], {key: value for key, value in choice.items() if key != "name"}
        if name in FUSED:
            runs = reference_runs(name, request, fn, starts, steps, record_every, one_parameter=True, fused=True)
        else:
            runs = reference_runs(name, request, fn, starts, steps, record_every)
        per_optimizer.append(runs)
    return [runs[start] for start in range(len(starts)) for runs in per_optimizer]


def test_runs_equal_independent_loops(client: AppClient) -> None:
    starts = torch.tensor([[1.0, 0.0], [-4.0, 0.0]], dtype=torch.float64)
    body: dict[str, Any] = {
        "objective": "himmelblau",
        "starts": to_base64(starts),
        "optimizer": [
            {"name": "adam", "lr": 0.01, "betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.1, "amsgrad": True},
            {"name": "lbfgs", "max_iter": 5, "line_search_fn": "none", "lr": 0.05},
            {"name": "rmsprop", "lr": 0.003, "momentum": 0.5, "centered": True},
        ],
        "steps": 30,
        "record_every": 10,
        "dtype": "float64",
    }
    response = client.post("/v1/optimize", json=body)
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert [(run["start"], run["optimizer"]["name"]) for run in runs] == [
        (start, name) for start in (0, 1) for name in ("adam", "lbfgs", "rmsprop")
    ]
    for run, expected in zip(runs, expected_runs(body, starts), strict=True):
        assert_run_is(run, expected)
        assert expected.stopped == "max_steps" and expected.trajectory[-1][0] == 30
    for run in runs:  # the echo: the request's values, and the registered defaults for the rest
        (choice,) = [choice for choice in body["optimizer"] if choice["name"] == run["optimizer"]["name"]]
        defaults = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in OPTIMIZERS.get(choice["name"]).defaults().items()
        }
        assert run["optimizer"] == {**defaults, **choice}


@pytest.mark.parametrize("name", list(TORCH_CLASSES))
@settings(max_examples=examples(3))
@given(data=st.data(), starts=STARTS)
def test_every_optimizer_over_http_equals_torchs_loops(
    client: AppClient, name: str, data: st.DataObject, starts: torch.Tensor
) -> None:
    """Hyper-parameters drawn over each optimizer's schema, sent as JSON: the route hands torch
    the request's values (and the defaults for the rest)."""
    request = data.draw(requests(name), label="request")
    steps, record_every = data.draw(schedules(name), label="steps, record_every")
    body = {
        "objective": "himmelblau",
        "starts": starts.tolist(),
        "optimizer": [{"name": name, **request}],
        "steps": steps,
        "record_every": record_every,
        "dtype": "float64",
    }
    response = client.post("/v1/optimize", json=body)
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    for run, expected in zip(runs, expected_runs(body, starts), strict=True):
        assert_run_is(run, expected)


def test_expression_objective_fits_the_seed_perceptron(client: AppClient) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 10, generator=generator, dtype=torch.float64)
    w0 = torch.randn(2, 10, generator=generator, dtype=torch.float64)
    # The variable as a point [d], reshaped into the weight matrix by the expression (a [2, 10]
    # variable itself: tests/api/test_optimize_shapes_api.py).
    body = {
        "objective": {
            "expression": "W = reshape(w, 2, 10)\no = sigmoid(x @ W.T)\nmse(ones_like(o), o)",
            "variable": "w",
            "inputs": {"x": x.tolist()},
        },
        "x0": w0.reshape(-1).tolist(),
        "optimizer": {"name": "sgd", "lr": 0.5},
        "steps": 3,
        "dtype": "float64",
    }
    run = client.post("/v1/optimize", json=body).json()["runs"][0]
    leaf = w0.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([leaf], lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(torch.ones(1, 2, dtype=torch.float64), torch.sigmoid(x @ leaf.t())).backward()
        optimizer.step()
    # The expression's graph rounds mse and sigmoid in its own order (measured: 5.6e-17).
    torch.testing.assert_close(from_wire(run["x"]), leaf.detach().reshape(-1), rtol=0, atol=1e-15)
    assert run["nearest_minimum"] is None


def test_landscape(client: AppClient) -> None:
    body = {
        "objective": "himmelblau",
        "x_range": [-6, 6],
        "y_range": [-5, 5],
        "resolution": [4, 3],
        "gradient": True,
        "dtype": "float64",
    }
    data = client.post("/v1/landscape", json=body).json()
    xs, ys = torch.tensor(data["x"]), torch.tensor(data["y"])
    z, grad = from_wire(data["z"]), from_wire(data["grad"])
    assert z.shape == (3, 4)
    assert grad.shape == (3, 4, 2)
    himmelblau = OBJECTIVES.get("himmelblau").fn
    for j in range(3):
        for i in range(4):
            point = torch.tensor([xs[i], ys[j]], dtype=torch.float64, requires_grad=True)
            value = himmelblau(point)
            (expected,) = torch.autograd.grad(value, point)
            assert z[j, i] == value.item()
            torch.testing.assert_close(grad[j, i], expected, rtol=1e-15, atol=1e-15)  # measured: 1.7e-16


def test_landscape_of_an_expression(client: AppClient) -> None:
    body = {
        "objective": {"expression": "x[0] ** 2 + 3 * x[1]"},
        "x_range": [-1, 1],
        "y_range": [0, 2],
        "resolution": 3,
        "gradient": True,
    }
    data = client.post("/v1/landscape", json=body).json()
    assert data["z"] == [[1.0, 0.0, 1.0], [4.0, 3.0, 4.0], [7.0, 6.0, 7.0]]
    assert data["grad"][0][0] == [-2.0, 3.0]


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("/v1/optimize", {"objective": "himmelblau", "x0": [1, 0, 0]}, 400, "shape_mismatch"),
    ("/v1/optimize", {"objective": "himmelblau"}, 400, "invalid_input"),
    ("/v1/optimize", {"objective": "himmelblau", "x0": [1, 0], "starts": [[1, 0]]}, 400, "invalid_input"),
    ("/v1/optimize", {"objective": "himmelblau", "starts": [1, 0]}, 400, "shape_mismatch"),
    ("/v1/optimize", {"objective": "himmelblau", "x0": [[1, 0], [2]]}, 400, "ragged_array"),
    # Which of several faults is reported: the request's shape before its tensors' contents.
    ("/v1/optimize", {"objective": "himmelblau", "x0": [[1, 0], [2]], "starts": [[1, 0]]}, 400, "invalid_input"),
    (
        "/v1/optimize",
        {"objective": {"expression": "sum(x)", "inputs": {"x": [[1.0], [2.0, 3.0]]}}, "x0": [0.0]},
        400,
        "invalid_input",
    ),
    ("/v1/optimize", {"objective": {"expression": "x * 2"}, "x0": [1, 0], "steps": 2}, 400, "not_scalar"),
    ("/v1/optimize", {"objective": {"expression": "x.__class__"}, "x0": [1, 0]}, 400, "invalid_expression"),
    ("/v1/optimize", {"objective": "nope", "x0": [1, 0]}, 404, "unknown_objective"),
    ("/v1/optimize", {"objective": "himmelblau", "x0": [1, 0], "optimizer": "newton"}, 404, "unknown_optimizer"),
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "optimizer": {"name": "adam", "lr": 0}},
        422,
        "validation_error",
    ),
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "optimizer": {"name": "adam", "momentum": 1}},
        422,
        "validation_error",
    ),
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "optimizer": {"name": "adam", "betas": [0.9, 1.0]}},
        422,
        "validation_error",
    ),
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "optimizer": {"name": "adamw", "betas": [1.5, 0.999]}},
        422,
        "validation_error",
    ),
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "optimizer": {"name": "sgd", "nesterov": True}},
        422,
        "validation_error",
    ),
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "optimizer": {"name": "sgd", "lr": 1e39}},
        422,
        "validation_error",
    ),
    ("/v1/optimize", {"objective": "himmelblau", "x0": [1, 0], "steps": -1}, 422, "validation_error"),
    ("/v1/optimize", {"objective": "himmelblau", "x0": [1, 0], "record_every": 0}, 422, "validation_error"),
    ("/v1/optimize", {"objective": "himmelblau", "x0": [1, 0], "steps": 10**9}, 413, "too_many_steps"),
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "steps": 10**6, "record_every": 1},
        413,
        "trajectory_too_long",
    ),
    ("/v1/landscape", {"objective": "himmelblau", "x_range": [1, -1], "y_range": [0, 1]}, 400, "invalid_input"),
    (
        "/v1/landscape",
        {"objective": "himmelblau", "x_range": [0, 1], "y_range": [0, 1], "resolution": 1},
        400,
        "invalid_input",
    ),
    (
        "/v1/landscape",
        {"objective": "himmelblau", "x_range": [0, 1], "y_range": [0, 1], "resolution": 10**4},
        413,
        "grid_too_large",
    ),
    ("/v1/landscape", {"objective": "rosenbrock", "x_range": [0, 1]}, 422, "validation_error"),
    ("/v1/landscape", {"objective": "beale", "x_range": [0, 1, 2], "y_range": [0, 1]}, 422, "validation_error"),
]


@pytest.mark.parametrize(("path", "body", "status", "error_type"), BAD)
def test_bad_requests(client: AppClient, path: str, body: dict[str, Any], status: int, error_type: str) -> None:
    assert_error(client.post(path, json=body), status, error_type)


@pytest.mark.parametrize(
    "sgd",
    [{"nesterov": True}, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, {"nesterov": True, "momentum": -1}],
)
def test_nesterov_without_momentum_is_a_validation_error_naming_it(client: AppClient, sgd: dict[str, Any]) -> None:
    """torch's SGD refuses it (ValueError): a 422 before any run, as every listed optimizer is checked."""
    body = {"objective": "himmelblau", "x0": [1, 0], "optimizer": ["adam", {"name": "sgd", **sgd}]}
    error = assert_error(client.post("/v1/optimize", json=body), 422, "validation_error")
    assert [item["loc"][-1] for item in error["errors"]] == ["momentum" if sgd.get("momentum") == -1 else "nesterov"]
    assert error["errors"][0]["loc"][:3] == ["body", "optimizer", 1]


def test_nesterov_with_momentum_runs(client: AppClient) -> None:
    optimizer = {"name": "sgd", "nesterov": True, "momentum": 0.9}
    body = {"objective": "himmelblau", "x0": [1, 0], "optimizer": optimizer, "steps": 3}
    response = client.post("/v1/optimize", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["runs"][0]["steps"] == 3


def test_limits_are_reported(make_client: ClientFactory) -> None:
    limits = make_client(max_steps=5).get("/v1/info").json()["limits"]
    assert limits["max_steps"] == 5
    assert "max_trajectory_points" in limits
    assert "max_grid_points" in limits


def parse_events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], orjson.loads(fields["data"])))
    return events


def test_streamed_progress_then_result(client: AppClient) -> None:
    body = {"objective": "himmelblau", "starts": [[1, 0], [-4, 0]], "steps": 40, "record_every": 10, "dtype": "float64"}
    response = client.post("/v1/optimize", json=body, headers={"accept": "text/event-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds == ["progress"] * 5 + ["result"]
    assert [data["step"] for _, data in events[:-1]] == [0, 10, 20, 30, 40]
    assert [run["start"] for run in events[0][1]["runs"]] == [0, 1]
    plain = client.post("/v1/optimize", json=body).json()
    result = events[-1][1]
    assert [run["x"] for run in result["runs"]] == [run["x"] for run in plain["runs"]]
    assert events[-2][1]["runs"][0]["x"] == plain["runs"][0]["x"]


def test_streamed_errors_are_events_or_statuses(client: AppClient) -> None:
    headers = {"accept": "text/event-stream"}
    unknown = client.post("/v1/optimize", json={"objective": "nope", "x0": [1, 0]}, headers=headers)
    assert unknown.status_code == 404
    response = client.post("/v1/optimize", json={"objective": "himmelblau", "x0": [1, 0, 2]}, headers=headers)
    assert parse_events(response.text) == [
        (
            "error",
            {
                "error": {
                    "type": "shape_mismatch",
                    "message": "himmelblau is 2-dimensional, but the starts are 3-dimensional.",
                }
            },
        )
    ]


def test_summary_report_counts_basins(client: AppClient) -> None:
    grid = torch.cartesian_prod(torch.linspace(-5, 5, 6), torch.linspace(-5, 5, 6)).to(torch.float64)
    body = {
        "objective": "himmelblau",
        "starts": to_base64(grid),
        "optimizer": {"name": "lbfgs"},
        "steps": 20,
        "tolerance": 1e-9,
        "report": "summary",
        "encoding": "base64",
        "dtype": "float64",
    }
    summary = client.post("/v1/optimize", json=body).json()["summary"]
    points = from_wire(summary["x"])
    assert points.shape == (36, 2)
    assert from_wire(summary["value"]).shape == (36,)
    assert summary["optimizers"] == ["lbfgs"]
    assert from_wire(summary["steps"]).shape == (36,)
    counts = [minimum["count"] for minimum in summary["minima"]]
    himmelblau = OBJECTIVES.get("himmelblau")
    expected = [0, 0, 0, 0]
    for point in points.tolist():
        distances = [math.dist(point, x) for x, _ in himmelblau.minima(2)]
        if min(distances) <= 1e-3:
            expected[distances.index(min(distances))] += 1
    assert counts == expected
    assert sum(counts) >= 30  # nearly every start of this grid reaches one of the four minima
    assert sum(summary["stopped"].values()) == 36


REVIEW_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "optimizer": [], "report": "summary"},
        422,
        "validation_error",
    ),
    (
        "/v1/optimize",
        {"objective": "himmelblau", "x0": [1, 0], "steps": 600_000, "optimizer": "lbfgs"},
        413,
        "too_many_steps",
    ),
    (
        "/v1/optimize",
        {"objective": "sphere", "x0": [1.0] * 20_000, "optimizer": {"name": "lbfgs", "history_size": 1000}, "steps": 1},
        413,
        "state_too_large",
    ),
    (
        "/v1/optimize",
        {"objective": "sphere", "x0": [1.0] * 50_000, "steps": 200, "record_every": 1},
        413,
        "trajectory_too_long",
    ),
    (
        "/v1/landscape",
        {
            "objective": {"expression": "sum(x[0] * c + x[1])", "inputs": {"c": [0.001] * 1000}},
            "x_range": [-1, 1],
            "y_range": [-1, 1],
            "resolution": 300,
        },
        413,
        "intermediate_too_large",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "error_type"), REVIEW_CASES)
def test_review_cases(client: AppClient, path: str, body: dict[str, Any], status: int, error_type: str) -> None:
    assert_error(client.post(path, json=body), status, error_type)


def test_landscape_of_a_loss_expression(client: AppClient) -> None:
    body = {
        "objective": {"expression": "mse(x, c)", "inputs": {"c": [0.3, 0.7]}},
        "x_range": [-2, 2],
        "y_range": [-1, 3],
        "resolution": 3,
        "gradient": True,
        "dtype": "float64",
    }
    data = client.post("/v1/landscape", json=body).json()
    assert data["z"][1][1] == pytest.approx(((0 - 0.3) ** 2 + (1 - 0.7) ** 2) / 2)


def test_an_objective_that_ignores_x_has_zero_gradient(client: AppClient) -> None:
    body = {
        "objective": {"expression": "sum(c)", "inputs": {"c": [1.0, 2.0]}},
        "x0": [0.5],
        "steps": 3,
        "tolerance": 0.0,
    }
    run = client.post("/v1/optimize", json=body).json()["runs"][0]
    assert run["grad_norm"] == 0.0
    assert run["stopped"] == "tolerance"


SLOW_LBFGS = {
    "objective": "rosenbrock",
    "x0": [-1.0] * 3000,
    "steps": 5,
    "optimizer": {"name": "lbfgs", "max_iter": 1000, "tolerance_grad": 0, "tolerance_change": 0},
    "report": "summary",
}


def test_a_run_past_the_time_budget_is_a_504(make_client: ClientFactory) -> None:
    limited = make_client(request_timeout_s=0.5)
    error = assert_error(limited.post("/v1/optimize", json=SLOW_LBFGS), 504, "deadline_exceeded")
    assert "0.5 s" in error["message"]


def test_a_streamed_run_stops_inside_an_lbfgs_step_at_the_deadline(make_client: ClientFactory) -> None:
    limited = make_client(request_timeout_s=0.5)
    events = parse_events(limited.post("/v1/optimize", json=SLOW_LBFGS, headers={"accept": "text/event-stream"}).text)
    kind, result = events[-1]
    assert kind == "result"
    assert result["summary"]["stopped"] == {"deadline": 1}


def test_progress_events_follow_the_wire_format(client: AppClient) -> None:
    body = {
        "objective": "sphere",
        "starts": [["NaN", 0.0], [1.0, 2.0]],
        "steps": 2,
        "record_every": 1,
        "encoding": "base64",
    }
    events = parse_events(client.post("/v1/optimize", json=body, headers={"accept": "text/event-stream"}).text)
    first = events[0][1]["runs"]
    assert first[0]["value"] == "NaN"
    assert first[1]["x"]["dtype"] == "float32"
    assert first[1]["optimizer"] == "adam"
    assert first[1]["optimizer_index"] == 0


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_a_long_adam_run_is_compiled_after_it_and_the_next_one_uses_the_kernel(make_client: ClientFactory) -> None:
    """The first long run asks for a compile, which starts in its worker process once it has
    answered; the front's /metrics counts it; the next run uses the kernel and ends within 1e-12
    of torch.optim's fused loop."""
    client = make_client(
        compile=True, compile_min_steps=100, step_machine=False
    )  # kernels: for the machine's leftovers
    starts = [[1.0, 0.0], [-4.0, 0.0], [4.0, 0.0], [0.5, -1.5]]
    body = {
        "objective": "himmelblau",
        "starts": starts,
        "optimizer": {"name": "adam", "lr": 0.01},
        "steps": 400,
        "record_every": 200,
        "dtype": "float64",
    }
    first = client.post("/v1/optimize", json=body).json()["runs"]
    compiled = 'gradient_compilations_seconds_count{outcome="compiled"} 1.0'
    waited = 0.0
    while compiled not in client.get("/metrics").text:
        assert waited < 300, "the compile did not finish in 300 s"
        time.sleep(0.5)
        waited += 0.5
    second = client.post("/v1/optimize", json=body).json()["runs"]
    expected = reference_runs(
        "adam",
        {"lr": 0.01},
        OBJECTIVES.get("himmelblau").fn,
        torch.tensor(starts, dtype=torch.float64),
        400,
        200,
        one_parameter=True,
        fused=True,
    )
    for before, after, want in zip(first, second, expected, strict=True):
        assert_run_is(before, want)  # eager: the fused kernel's arithmetic
        assert (after["steps"], after["trajectory"]["step"]) == (400, [0, 200, 400])
        close(from_wire(after["x"]), want.x, rtol=1e-12, atol=1e-12)  # compiled: another rounding order


def test_streamed_progress_of_runs_made_start_by_start_names_each_start(client: AppClient) -> None:
    body = {"objective": "himmelblau", "starts": [[1, 0], [-4, 0]], "optimizer": "lbfgs", "steps": 2, "record_every": 1}
    response = client.post("/v1/optimize", json=body, headers={"accept": "text/event-stream"})
    progress = [data for kind, data in parse_events(response.text) if kind == "progress"]
    assert {run["start"] for data in progress for run in data["runs"]} == {0, 1}


def test_a_boolean_base_keeps_its_promotion_under_a_number_exponent(client: AppClient) -> None:
    """(x > 0) ** 2 is a float tensor, as with a tensor exponent: the run is traced and equals autograd."""
    expression = "(x[0] > 0) ** 2 - (x[1] < 0) ** 2 + sum(x ** 2)"
    body = {
        "objective": {"expression": expression, "variable": "x"},
        "starts": [[1.0, -2.0], [-0.5, 0.5]],
        "optimizer": {"name": "sgd", "lr": 0.1},
        "steps": 5,
        "record_every": 5,
        "dtype": "float64",
    }
    runs = client.post("/v1/optimize", json=body).json()["runs"]
    for run, start in zip(runs, body["starts"], strict=True):  # type: ignore[call-overload]
        expected = torch.tensor(start, dtype=torch.float64) * 0.8**5  # the indicator terms have no gradient
        torch.testing.assert_close(from_wire(run["x"]), expected, rtol=0, atol=1e-15)  # a closed form
    assert runs[0]["value"] == pytest.approx(1.0 - 1.0 + float((torch.tensor([1.0, -2.0]) * 0.8**5).square().sum()))


TYPED_RESPONSES = {
    ("/v1/objectives", "get"): "ObjectiveCatalog",
    ("/v1/optimizers", "get"): "OptimizerCatalog",
    ("/v1/optimize", "post"): "OptimizeResponse",
    ("/v1/landscape", "post"): "LandscapeResponse",
}


def test_the_openapi_names_each_optimisation_response_model(client: AppClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for (path, method), model in TYPED_RESPONSES.items():
        schema = paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}, (path, schema)


def test_optimisation_responses_match_their_documented_models(client: AppClient) -> None:
    """Each body the routes write is a valid instance of the model the OpenAPI names, whatever
    the report, the objective (catalog or formula) and the encoding."""
    assert ObjectiveCatalog.model_validate(client.get("/v1/objectives").json()).objectives
    assert OptimizerCatalog.model_validate(client.get("/v1/optimizers").json()).optimizers
    named = {"objective": "himmelblau", "starts": [[1.0, 0.0], [-4.0, 0.0]], "steps": 30, "record_every": 10}
    formula = {"objective": {"expression": "sum((x - c) ** 2)", "inputs": {"c": [1.0, 2.0]}}, "x0": [0.0, 0.0]}
    for body in (named, {**named, "report": "summary"}, {**formula, "steps": 5}, {**named, "encoding": "base64"}):
        response = client.post("/v1/optimize", json=body)
        assert response.status_code == 200, response.text
        parsed = OptimizeResponse.model_validate(response.json())
        assert (parsed.runs is None) == (body.get("report") == "summary")
        assert (parsed.summary is None) != (body.get("report") == "summary")
    grid = {"objective": "himmelblau", "x_range": [-1, 1], "y_range": [-1, 1], "resolution": 3, "gradient": True}
    landscape = LandscapeResponse.model_validate(client.post("/v1/landscape", json=grid).json())
    assert landscape.grad is not None
