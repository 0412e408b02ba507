"""The blocking client against the real service, checked against torch computed here and the
documented examples; its encodings, errors, retries and event streams; and its pure parts (the
wire format, the event-stream parser, the retry policy) on their own."""

from __future__ import annotations

import asyncio
import base64
import http.server
import inspect
import itertools
import json
import math
import pickle
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gradient_client
import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradient_client import (
    AsyncClient,
    Client,
    ClientTimeoutError,
    ConnectionFailedError,
    DeadlineError,
    GradientError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    ProgressEvent,
    ResultEvent,
    TensorShape,
    TooLargeError,
    UnauthorizedError,
    ValidationError,
    _calls,
)
from gradient_client._retry import RetryPolicy, parse_retry_after
from gradient_client._sse import Event, EventParser
from gradient_client._wire import TINY, Kind, choose_dtype, from_wire, prepare, to_wire
from gradient_client.client import _exchange, _Reply, _Send, _Settings, _Sleep
from gradient_client.errors import error_from_body, status_of_type

import service
from bench.servers import free_port
from tests.e2e.serving import running_server

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
HIMMELBLAU = "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2"
API_KEY = "client-test-key"
# Holds the restricted server's only compute slot until its 3 s time budget ends it with a 504.
LONG_RUN: dict[str, Any] = {"x0": [0.0, 0.0], "steps": 5_000_000, "record_every": 5_000_000, "report": "summary"}


def himmelblau(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 0] ** 2 + x[..., 1] - 11) ** 2 + (x[..., 0] + x[..., 1] ** 2 - 7) ** 2


def present(value: T | None) -> T:
    assert value is not None
    return value


def metric(base: str, name: str) -> float:
    """A sample's value in the server's /metrics (0 if absent)."""
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def sent_bodies(client: Client) -> list[dict[str, Any]]:
    """Records the JSON body of every request ``client`` sends from now on."""
    bodies: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> None:
        if request.content:
            bodies.append(json.loads(request.content))

    client.http.event_hooks["request"].append(record)
    return bodies


# --- the package ---------------------------------------------------------------------------------


def test_the_client_and_the_service_have_one_version() -> None:
    assert gradient_client.__version__ == service.__version__


RETURNS = {
    "activations": "list[dict[str, Any]]",
    "losses": "list[dict[str, Any]]",
    "functions": "dict[str, Any]",
    "objectives": "list[dict[str, Any]]",
    "optimizers": "list[dict[str, Any]]",
    "info": "dict[str, Any]",
    "activation": "ActivationResult",
    "loss": "LossResult",
    "differentiate": "DifferentiateResult | DryRunResult",
    "optimize": "OptimizeResult",
    "landscape": "LandscapeResult",
}
"""What each method of both clients returns (``optimize_stream`` aside), as its signature says."""


def test_methods_carry_their_signature_and_documentation() -> None:
    for client_class, stream in ((Client, "EventStream"), (AsyncClient, "AsyncEventStream")):
        methods = {name for name, value in vars(client_class).items() if callable(value) and name[0] != "_"}
        assert methods == {*RETURNS, "optimize_stream", "close"}
        for name, returns in {**RETURNS, "optimize_stream": stream}.items():
            method = getattr(client_class, name)
            build = getattr(_calls, name.removesuffix("_stream"))
            signature = inspect.signature(method)
            assert list(signature.parameters) == ["self", *inspect.signature(build).parameters], name
            assert signature.return_annotation == returns, name
            assert method.__qualname__ == f"{client_class.__name__}.{name}"
            assert method.__doc__, name
    signature = inspect.signature(Client.activation)
    assert list(signature.parameters)[:3] == ["self", "name", "input"]
    assert "``hessian``" in (Client.differentiate.__doc__ or "")


# --- activations -------------------------------------------------------------------------------


def test_activation_sigmoid_with_second_order(client: Client) -> None:
    result = client.activation("sigmoid", [-2, 0, 2], second_order=True)
    x = torch.tensor([-2.0, 0.0, 2.0])
    s = torch.sigmoid(x)
    assert result.output.dtype == np.float32
    np.testing.assert_array_equal(result.output, s.numpy())
    np.testing.assert_allclose(result.grad, (s * (1 - s)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(present(result.grad2), (s * (1 - s) * (1 - 2 * s)).numpy(), rtol=1e-5, atol=1e-7)
    assert result.jacobian is None and result.jvp is None
    assert result.meta.dtype == "float32" and result.meta.device == "cpu" and result.meta.elapsed_ms >= 0


def test_activation_softmax_jacobian_and_jvp(client: Client) -> None:
    x = np.array([1.0, 2.0, 3.0])  # float64: the result is float64
    result = client.activation("softmax", x, params={"dim": 0}, jacobian=True, tangent=[1.0, 0.0, 0.0])
    expected = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, dim=0), torch.from_numpy(x))
    assert result.jacobian is not None and result.jacobian.dtype == np.float64
    np.testing.assert_allclose(result.jacobian, expected.numpy(), rtol=1e-12)
    p = torch.softmax(torch.from_numpy(x), 0).numpy()
    np.testing.assert_allclose(result.jacobian, np.diag(p) - np.outer(p, p), rtol=1e-12)
    assert result.jvp is not None
    np.testing.assert_allclose(result.jvp, expected.numpy()[:, 0], rtol=1e-12)


def test_activation_params_and_grad_output(client: Client) -> None:
    x = np.array([[-1.0, 2.0], [3.0, -4.0]], dtype=np.float32)
    g = np.array([[1.0, 1.0], [0.5, 2.0]], dtype=np.float32)
    result = client.activation("leaky_relu", x, params={"negative_slope": 0.2}, grad_output=g)
    t = torch.from_numpy(x).requires_grad_()
    out = F.leaky_relu(t, 0.2)
    out.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(result.output, out.detach().numpy())
    assert t.grad is not None
    np.testing.assert_array_equal(result.grad, t.grad.numpy())


def test_large_arrays_travel_as_base64_both_ways(client: Client) -> None:
    bodies = sent_bodies(client)
    x = np.random.default_rng(0).standard_normal((40, 25)).astype(np.float32)
    result = client.activation("tanh", x, second_order=True)
    sent = bodies[-1]
    assert set(sent["input"]) == {"shape", "dtype", "base64"}
    assert sent["input"]["shape"] == [40, 25] and sent["input"]["dtype"] == "float32"
    assert sent["encoding"] == "base64"
    t = torch.tanh(torch.from_numpy(x))
    assert result.output.shape == (40, 25) and result.output.dtype == np.float32
    np.testing.assert_array_equal(result.output, t.numpy())
    np.testing.assert_allclose(result.grad, (1 - t * t).numpy(), rtol=1e-6, atol=1e-7)

    tiny = client.activation("tanh", x[0, :3])
    assert bodies[-1]["input"] == [float(v) for v in x[0, :3]]  # a nested list, exact float32 values
    np.testing.assert_array_equal(tiny.output, t[0, :3].numpy())


@pytest.mark.parametrize("size", [4, 1000], ids=["nested", "base64"])
def test_non_finite_values_round_trip(client: Client, size: int) -> None:
    x = np.linspace(-2, 2, size)
    x[:4] = [math.nan, math.inf, -math.inf, 0.0]
    result = client.differentiate("x * 1", {"x": x}, derivatives=["grad"], grad_output=np.ones(size))
    assert isinstance(result.value, np.ndarray) and result.value.dtype == np.float64
    np.testing.assert_array_equal(result.value, x)  # assert_array_equal matches NaN with NaN
    produced = client.differentiate("log(x)", {"x": [0.0, -1.0, 1.0]}, dtype="float64")
    np.testing.assert_array_equal(produced.value, [-math.inf, math.nan, 0.0])
    assert produced.grad is not None
    np.testing.assert_array_equal(produced.grad["x"], [math.inf, -1.0, 1.0])


def test_softplus_of_non_finite_inputs_as_documented(client: Client) -> None:
    result = client.activation("softplus", np.array([-np.inf, np.nan, 30.0], dtype=np.float32))
    np.testing.assert_array_equal(result.output, [0.0, math.nan, 30.0])


def test_dtypes_follow_the_inputs_or_the_request(client: Client) -> None:
    def output_dtype(x: Any, dtype: str | None = None) -> np.dtype[Any]:
        return client.activation("tanh", x, dtype=dtype).output.dtype

    assert output_dtype([0.5, 1.0]) == np.float32  # Python numbers have no dtype of their own
    assert output_dtype(0.5) == np.float32
    assert output_dtype(np.array([0.5], dtype=np.float32)) == np.float32
    assert output_dtype(np.array([0.5], dtype=np.float16)) == np.float32
    assert output_dtype(np.array([0.5])) == np.float64
    assert output_dtype(np.array([1, 2])) == np.float32  # integers are cast
    assert output_dtype(torch.tensor([0.5], dtype=torch.float64)) == np.float64
    assert output_dtype(torch.tensor([0.5], dtype=torch.bfloat16)) == np.float32
    assert output_dtype([0.5], dtype="float64") == np.float64
    assert output_dtype(np.array([0.5]), dtype="float32") == np.float32
    # One float64 input among others decides for the request.
    loss = client.loss("mse", np.array([1.0, 2.0], dtype=np.float32), np.array([0.0, 0.0]))
    assert loss.loss.dtype == np.float64 and loss.meta.dtype == "float64"


def test_torch_tensors_are_accepted(client: Client) -> None:
    x = torch.linspace(-1, 1, 30, dtype=torch.float64, requires_grad=True)
    result = client.activation("gelu", x)
    np.testing.assert_allclose(result.output, F.gelu(x).detach().numpy(), rtol=1e-12)


# --- losses ------------------------------------------------------------------------------------


def test_cross_entropy_with_a_class_index(client: Client) -> None:
    logits = [[1.0, 2.0, 0.5, -1.0]]
    result = client.loss("cross_entropy", logits, [3])
    t = torch.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(t, torch.tensor([3]))
    loss.backward()
    assert t.grad is not None
    np.testing.assert_allclose(result.loss, loss.item(), rtol=1e-6)
    np.testing.assert_allclose(present(result.grad["input"]), t.grad.numpy(), rtol=1e-5)
    assert result.grad["target"] is None and result.grad["weight"] is None


def test_int64_targets_of_any_size_are_class_indices(client: Client) -> None:
    bodies = sent_bodies(client)
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((64, 5))
    target = rng.integers(0, 5, 64)
    weight = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    result = client.loss("nll", F.log_softmax(torch.from_numpy(logits), 1).numpy(), target, weight)
    assert bodies[-1]["target"]["dtype"] == "int64"
    t = F.log_softmax(torch.from_numpy(logits), 1).requires_grad_()
    loss = F.nll_loss(t, torch.from_numpy(target), weight=torch.from_numpy(weight))
    loss.backward()
    assert t.grad is not None
    np.testing.assert_allclose(result.loss, loss.item(), rtol=1e-12)
    np.testing.assert_allclose(present(result.grad["input"]), t.grad.numpy(), rtol=1e-12)
    tiny = client.loss("cross_entropy", logits[:2], target[:2])  # two indices: int64 too, not floats
    assert bodies[-1]["target"]["dtype"] == "int64"
    np.testing.assert_allclose(
        tiny.loss, F.cross_entropy(torch.from_numpy(logits[:2]), torch.from_numpy(target[:2])).item(), rtol=1e-12
    )


def test_probability_targets_weights_and_label_smoothing(client: Client) -> None:
    logits, target, weight = [[2.0, 1.0, 0.1]], [[0.2, 0.3, 0.5]], [1.0, 2.0, 3.0]
    result = client.loss("cross_entropy", logits, target, weight, params={"label_smoothing": 0.1}, dtype="float64")
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(target, dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy(z, y, weight=torch.tensor(weight, dtype=torch.float64), label_smoothing=0.1)
    loss.backward()
    assert z.grad is not None and y.grad is not None
    np.testing.assert_allclose(result.loss, loss.item(), rtol=1e-12)
    np.testing.assert_allclose(present(result.grad["input"]), z.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(present(result.grad["target"]), y.grad.numpy(), rtol=1e-12)


def test_mse_per_element_with_grad_output_and_entropy(client: Client) -> None:
    result = client.loss("mse", [1, 2], [0, 0], params={"reduction": "none"}, grad_output=[1, 3])
    np.testing.assert_array_equal(result.loss, [1.0, 4.0])
    np.testing.assert_array_equal(result.grad["input"], [2.0, 12.0])  # 2 (input - target) grad_output
    entropy = client.loss("entropy", [0.25, 0.25, 0.5], params={"base": "2"})
    np.testing.assert_allclose(entropy.loss, 1.5, rtol=1e-6)


# --- differentiation ---------------------------------------------------------------------------


def test_himmelblau_gradient_and_hessian_at_its_minimum(client: Client) -> None:
    result = client.differentiate(HIMMELBLAU, {"x": [3.0, 2.0]}, derivatives=["grad", "hessian"])
    assert result.grad is not None and result.hessian is not None
    np.testing.assert_array_equal(result.value, 0.0)
    np.testing.assert_array_equal(result.grad["x"], [0.0, 0.0])
    np.testing.assert_array_equal(result.hessian["x"]["x"], [[74.0, 20.0], [20.0, 34.0]])
    assert result.jacobian is None and result.jvp is None and result.hvp is None and result.cost is None


def test_jvp_and_hvp_equal_torch(client: Client) -> None:
    x = np.array([0.3, -1.7])
    u = np.array([0.6, 0.8])
    result = client.differentiate(HIMMELBLAU, {"x": x}, derivatives=["jvp", "hvp"], tangents={"x": u})
    jvp = torch.func.jvp(himmelblau, (torch.from_numpy(x),), (torch.from_numpy(u),))[1]
    hvp = torch.autograd.functional.hvp(himmelblau, torch.from_numpy(x), torch.from_numpy(u))[1]
    assert result.hvp is not None
    np.testing.assert_allclose(present(result.jvp), jvp.numpy(), rtol=1e-12)
    np.testing.assert_allclose(result.hvp["x"], hvp.numpy(), rtol=1e-12)


def test_softmax_gradient_and_jacobian_with_respect_to_chosen_inputs(client: Client) -> None:
    a = np.array([0.2, 0.5, 0.9])
    result = client.differentiate("softmax(a, dim=0) * b", {"a": a, "b": np.ones(3)}, wrt=["a"], derivatives="jacobian")
    expected = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, 0), torch.from_numpy(a))
    assert result.jacobian is not None and set(result.jacobian) == {"a"}
    np.testing.assert_allclose(result.jacobian["a"], expected.numpy(), rtol=1e-12)
    assert result.grad is None


def test_a_large_matrix_gradient(client: Client) -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((30, 30))
    x = rng.standard_normal((5, 30))
    result = client.differentiate("sum(tanh(x @ w.T) ** 2)", {"x": x, "w": w}, wrt="w")
    tw = torch.from_numpy(w).requires_grad_()
    (torch.tanh(torch.from_numpy(x) @ tw.T) ** 2).sum().backward()
    assert result.grad is not None and tw.grad is not None
    np.testing.assert_allclose(result.grad["w"], tw.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_batches_of_points(client: Client) -> None:
    points = np.array([[3.0, 2.0], [0.0, 0.0], [-2.805118, 3.131312]])
    result = client.differentiate(HIMMELBLAU, {"x": points}, batch=["x"], derivatives=["grad", "hessian"])
    t = torch.from_numpy(points)
    assert result.grad is not None and result.hessian is not None
    np.testing.assert_allclose(result.value, himmelblau(t).numpy(), rtol=1e-12, atol=1e-9)
    grads = torch.func.vmap(torch.func.grad(himmelblau))(t)
    hessians = torch.func.vmap(torch.func.hessian(himmelblau))(t)
    np.testing.assert_allclose(result.grad["x"], grads.numpy(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(result.hessian["x"]["x"], hessians.numpy(), rtol=1e-12)


def test_integer_inputs_stay_integers(client: Client) -> None:
    logits = np.array([[1.0, 2.0, 0.5], [0.1, 0.2, 3.0]])
    result = client.differentiate("cross_entropy(z, t)", {"z": logits, "t": np.array([2, 1])})
    expected = torch.from_numpy(logits).requires_grad_()
    F.cross_entropy(expected, torch.tensor([2, 1])).backward()
    assert result.grad is not None and set(result.grad) == {"z"}  # t is not differentiated
    assert expected.grad is not None
    np.testing.assert_allclose(result.grad["z"], expected.grad.numpy(), rtol=1e-12)
    # Python integers are numbers to differentiate.
    plain = client.differentiate("sum(x ** 2)", {"x": [1, 2]})
    assert plain.grad is not None
    np.testing.assert_array_equal(plain.grad["x"], [2.0, 4.0])


def test_a_dry_run_returns_shapes_and_cost(client: Client) -> None:
    result = client.differentiate(
        "sum(W @ W @ W)", {"W": [[1.0, 2.0], [3.0, 4.0]]}, derivatives=["grad", "hessian"], dry_run=True
    )
    assert result.value == TensorShape((), "float32")
    assert result.grad == {"W": TensorShape((2, 2), "float32")}
    assert result.hessian == {"W": {"W": TensorShape((2, 2, 2, 2), "float32")}}
    assert result.hessian["W"]["W"].size == 16
    assert result.cost is not None and result.cost["flops"] > 0 and result.cost["bytes"] > 0


# --- optimisation ------------------------------------------------------------------------------


def torch_adam(start: list[float], lr: float, steps: int) -> np.ndarray[Any, Any]:
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        himmelblau(x).backward()
        optimizer.step()
    result: np.ndarray[Any, Any] = x.detach().numpy()
    return result


def test_optimize_runs_equal_torch_optim_loops(client: Client) -> None:
    starts = [[1.0, 0.0], [-4.0, 0.0], [4.0, 0.0]]
    result = client.optimize(
        "himmelblau", starts=np.array(starts), optimizer={"name": "adam", "lr": 0.05}, steps=300, record_every=100
    )
    assert result.runs is not None and len(result.runs) == 3 and result.summary is None
    for run, start in zip(result.runs, starts, strict=True):
        np.testing.assert_allclose(run.x, torch_adam(start, 0.05, 300), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(run.x0, start)
        assert run.x.dtype == np.float64 and run.steps == 300 and run.stopped == "max_steps"
        assert run.optimizer["name"] == "adam" and run.optimizer["lr"] == 0.05
        np.testing.assert_array_equal(run.trajectory.step, [0, 100, 200, 300])
        assert run.trajectory.x.shape == (4, 2) and run.trajectory.value.shape == (4,)
        np.testing.assert_array_equal(run.trajectory.x[-1], run.x)
        assert run.value == pytest.approx(himmelblau(torch.from_numpy(run.x)).item(), abs=1e-12)
        assert run.nearest_minimum is not None
    first = result.runs[0]
    assert first.nearest_minimum is not None
    np.testing.assert_allclose(first.nearest_minimum.x, [3.0, 2.0], atol=1e-5)
    assert first.nearest_minimum.distance < 1e-3


def test_optimize_an_expression_with_several_optimizers(client: Client) -> None:
    objective = {"expression": "sum((x - c) ** 2)", "variable": "x", "inputs": {"c": [1.0, 2.0]}}
    result = client.optimize(
        objective, x0=[0, 0], optimizer=["sgd", {"name": "lbfgs"}], steps=50, tolerance=1e-8, dtype="float64"
    )
    assert result.runs is not None
    assert [run.optimizer["name"] for run in result.runs] == ["sgd", "lbfgs"]
    lbfgs = result.runs[1]
    assert lbfgs.stopped == "tolerance" and lbfgs.nearest_minimum is None
    np.testing.assert_allclose(lbfgs.x, [1.0, 2.0], atol=1e-5)
    with pytest.raises(ValueError, match="expression"):
        client.optimize({"formula": "sum(x)"}, x0=[0.0])


def test_optimize_summary(client: Client) -> None:
    grid = np.array([[x / 2, y / 2] for x in range(-6, 6, 3) for y in range(-6, 6, 3)])
    result = client.optimize(
        "himmelblau", starts=grid, optimizer={"name": "adam", "lr": 0.05}, steps=1000, report="summary"
    )
    summary = result.summary
    assert summary is not None and result.runs is None
    assert summary.x.shape == (16, 2) and summary.value.shape == (16,)
    assert summary.steps.dtype == np.int64 and summary.optimizers == ["adam"]
    assert sum(summary.stopped.values()) == 16
    assert summary.minima is not None and len(summary.minima) == 4
    assert sum(basin.count for basin in summary.minima) <= 16
    np.testing.assert_allclose(summary.minima[0].x, [3.0, 2.0])


def test_optimize_stream_sends_progress_then_the_result(client: Client) -> None:
    with client.optimize_stream("himmelblau", starts=[[1, 0], [-4, 0]], steps=400, record_every=100) as stream:
        events = list(stream)
    kinds = [event.kind for event in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"progress"}
    steps = [event.step for event in events if event.kind == "progress"]
    assert steps == sorted(steps) and steps[0] == 0
    progress, last = events[0], events[-1]
    assert isinstance(progress, ProgressEvent) and isinstance(last, ResultEvent)
    assert [run.start for run in progress.runs] == [0, 1]
    np.testing.assert_array_equal(progress.runs[1].x, [-4.0, 0.0])
    assert progress.runs[0].value == pytest.approx(136.0) and progress.runs[0].optimizer == "adam"
    final = last.result
    assert stream.result is final and final.runs is not None
    assert [run.steps for run in final.runs] == [400, 400]


def finished_optimisations(base: str) -> float:
    return metric(base, 'gradient_compute_duration_seconds_count{op="optimize"}')


@pytest.mark.parametrize("leave", ["break", "close"])
def test_leaving_a_stream_early_stops_the_runs(client: Client, service_url: str, leave: str) -> None:
    before = finished_optimisations(service_url)
    long_run: dict[str, Any] = {"x0": [0.0, 0.0], "steps": 5_000_000, "record_every": 500}
    if leave == "break":
        # No reference kept: the stream is closed as the loop lets go of it.
        for event in client.optimize_stream("rosenbrock", **long_run):
            assert isinstance(event, ProgressEvent)
            if event.step >= 1000:
                assert finished_optimisations(service_url) == before  # the long run is under way
                break
    else:
        with client.optimize_stream("rosenbrock", **long_run) as stream:
            first = next(stream)
            assert first.kind == "progress" and finished_optimisations(service_url) == before
            stream.close()
            assert list(stream) == []
    left = time.monotonic()
    # The server's only compute slot frees when the run stops: a short run then takes it, and
    # both are counted as finished long before the 5 million steps (or the 60 s budget) end.
    short = client.optimize("sphere", x0=[1.0], steps=1)
    assert short.runs is not None and short.runs[0].steps == 1
    assert finished_optimisations(service_url) == before + 2
    assert time.monotonic() - left < 30


# --- the landscape and the catalogs ------------------------------------------------------------


def test_landscape_with_gradients(client: Client) -> None:
    result = client.landscape("himmelblau", [-6, 6], [-5, 5], resolution=(7, 5), gradient=True, dtype="float64")
    assert result.x.shape == (7,) and result.y.shape == (5,) and result.z.shape == (5, 7)
    np.testing.assert_allclose(result.x, np.linspace(-6, 6, 7))
    grid = torch.stack(torch.meshgrid(torch.from_numpy(result.y), torch.from_numpy(result.x), indexing="ij")[::-1], -1)
    np.testing.assert_allclose(result.z, himmelblau(grid).numpy(), rtol=1e-12)
    assert result.grad is not None and result.grad.shape == (5, 7, 2)
    expected = torch.func.vmap(torch.func.vmap(torch.func.grad(himmelblau)))(grid)
    np.testing.assert_allclose(result.grad, expected.numpy(), rtol=1e-12)
    assert client.landscape("himmelblau", [-1, 1], [-1, 1], resolution=3).grad is None


def test_catalogs_and_info(client: Client) -> None:
    assert "sigmoid" in {entry["name"] for entry in client.activations()}
    assert {"cross_entropy", "entropy"} <= {entry["name"] for entry in client.losses()}
    functions = client.functions()
    assert "logsumexp" in {entry["name"] for entry in functions["functions"]} and "@" in functions["operators"]
    himmelblau_entry = next(entry for entry in client.objectives() if entry["name"] == "himmelblau")
    assert len(himmelblau_entry["minima"]) == 4
    assert "lbfgs" in {entry["name"] for entry in client.optimizers()}
    info = client.info()
    assert info["version"] == gradient_client.__version__ and "base64" in info["encodings"]


def test_numpy_values_in_params_and_arguments(client: Client) -> None:
    """numpy scalars wherever a number goes; arrays and tensors in ``params`` as request tensors."""
    logits = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    target = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    pos_weight = np.array([2.0, 0.5, 3.0])
    local_input = torch.tensor(logits, requires_grad=True)
    local = F.binary_cross_entropy_with_logits(local_input, torch.tensor(target), pos_weight=torch.tensor(pos_weight))
    (local_grad,) = torch.autograd.grad(local, local_input)
    for weight in (pos_weight, torch.tensor(pos_weight)):
        result = client.loss("binary_cross_entropy_with_logits", logits, target, params={"pos_weight": weight})
        assert result.meta.dtype == "float64"
        np.testing.assert_allclose(result.loss, local.item(), rtol=1e-12)
        np.testing.assert_allclose(present(result.grad["input"]), local_grad.numpy(), rtol=1e-12)

    # More classes than travel as a nested list: pos_weight goes base64, in the request's dtype.
    bodies = sent_bodies(client)
    wide = np.linspace(0.5, 2.0, TINY + 4, dtype=np.float32)
    logits32, target32 = np.ones((2, TINY + 4), np.float32), np.ones((2, TINY + 4), np.float32)
    result = client.loss("binary_cross_entropy_with_logits", logits32, target32, params={"pos_weight": wide})
    sent = bodies[-1]["params"]["pos_weight"]
    assert (sent["dtype"], sent["shape"]) == ("float32", [TINY + 4])
    expected = F.binary_cross_entropy_with_logits(
        torch.from_numpy(logits32), torch.from_numpy(target32), pos_weight=torch.from_numpy(wide)
    )
    np.testing.assert_allclose(result.loss, expected.item(), rtol=1e-6)

    softmax = client.activation("softmax", np.array([1.0, 2.0, 3.0]), params={"dim": np.int64(0)})
    np.testing.assert_allclose(softmax.output, torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0).numpy(), rtol=1e-6)
    assert bodies[-1]["params"] == {"dim": 0}
    optimizer = {"name": "adam", "lr": np.float32(0.05), "betas": np.array([0.9, 0.99])}
    runs = client.optimize("himmelblau", x0=[1, 0], optimizer=optimizer, steps=np.int64(10), record_every=np.int64(5))
    run = present(runs.runs)[0]
    assert run.steps == 10 and run.optimizer["betas"] == [0.9, 0.99]
    assert client.landscape("himmelblau", [-1, 1], [-1, 1], resolution=np.int64(3)).z.shape == (3, 3)
    assert client.landscape("himmelblau", [-1, 1], [-1, 1], resolution=(np.int64(3), np.int64(4))).z.shape == (4, 3)


# --- errors ------------------------------------------------------------------------------------


def test_errors_have_their_subclass_and_fields(client: Client) -> None:
    ids: list[str] = []
    client.http.event_hooks["request"].append(lambda request: ids.append(request.headers["x-request-id"]))

    with pytest.raises(InvalidInputError) as invalid:
        client.differentiate("sum(x) + y", {"x": [1.0]})
    error = invalid.value
    assert (error.status, error.type) == (400, "unknown_name")
    assert error.line == 1 and error.column == 10 and error.details["line"] == 1
    assert error.request_id == ids[-1] and re.fullmatch(r"[0-9a-f]{32}", error.request_id)
    assert "unknown_name" in str(error) and error.request_id in str(error)
    with pytest.raises(AttributeError):
        _ = error.known

    with pytest.raises(InvalidInputError) as mismatch:
        client.activation("tanh", [1.0, 2.0], tangent=[1.0])
    assert mismatch.value.type == "shape_mismatch"

    with pytest.raises(NotFoundError) as unknown:
        client.activation("nope", [1.0])
    assert unknown.value.status == 404 and unknown.value.type == "unknown_activation"
    assert "sigmoid" in unknown.value.known

    with pytest.raises(TooLargeError) as large:
        client.landscape("himmelblau", [-1, 1], [-1, 1], resolution=2000)
    assert large.value.status == 413 and large.value.type == "grid_too_large" and large.value.limit == 1_000_000

    with pytest.raises(ValidationError) as invalid_schema:
        client.optimize("himmelblau", x0=[1, 0], optimizer={"name": "adam", "betas": [1.5, 0.999]})
    assert invalid_schema.value.status == 422
    assert invalid_schema.value.errors[0]["loc"] == ["body", "optimizer", 0, "betas", 0]

    for error_class in (InvalidInputError, NotFoundError, TooLargeError, ValidationError):
        assert issubclass(error_class, GradientError)
    copied = pickle.loads(pickle.dumps(error))
    assert type(copied) is InvalidInputError and copied.line == 1 and copied.request_id == error.request_id


def test_every_documented_error_type_maps_to_its_status() -> None:
    """``status_of_type`` (for errors inside an event stream) against docs/errors.md's table."""
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", (ROOT / "docs" / "errors.md").read_text(), re.MULTILINE)
    assert len(rows) > 40
    assert {name: status_of_type(name) for name, _ in rows} == {name: int(status) for name, status in rows}


def test_errors_are_built_from_bodies() -> None:
    classes = {400: InvalidInputError, 401: UnauthorizedError, 404: NotFoundError, 413: TooLargeError}
    classes |= {422: ValidationError, 429: OverloadedError, 503: OverloadedError, 504: DeadlineError}
    for status, error_class in classes.items():
        error = error_from_body(status, {"error": {"type": "t", "message": "m", "where": "input"}}, "id")
        assert type(error) is error_class and error.where == "input" and error.request_id == "id"
    other = error_from_body(500, {"error": {"type": "internal_error", "message": "m", "request_id": "abc"}}, None)
    assert type(other) is GradientError and other.request_id == "abc"
    proxy = error_from_body(502, "<html>Bad gateway</html>", "id")
    assert type(proxy) is GradientError and proxy.type == "http_error" and "Bad gateway" in proxy.message
    overloaded = error_from_body(503, {"error": {"type": "overloaded", "message": "m"}}, None, retry_after=2.0)
    assert isinstance(overloaded, OverloadedError) and overloaded.retry_after == 2.0


def test_an_unreachable_service_is_a_connection_error_after_the_retries() -> None:
    attempts: list[str] = []
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, retries=2) as client:
        client.http.event_hooks["request"].append(lambda request: attempts.append(request.headers["x-request-id"]))
        with pytest.raises(ConnectionFailedError) as failed:
            client.info()
    assert failed.value.status is None and failed.value.type == "connection_failed"
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
    assert len(attempts) == 3 and len(set(attempts)) == 1 and failed.value.request_id == attempts[0]
    assert "3 attempts" in failed.value.message


STREAM_ERROR = b'event: error\ndata: {"error": {"type": "deadline_exceeded", "message": "late"}}\n\n'


class _IdDroppingServer(http.server.ThreadingHTTPServer):
    """Answers every POST with an event stream that ends in an error event, naming no request id:
    no ``X-Request-ID`` header (as behind a proxy that drops it), none in the event."""

    sent: list[str]
    """The ``X-Request-ID`` of each request received."""


class _StreamEndingInAnError(http.server.BaseHTTPRequestHandler):
    server: _IdDroppingServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.sent.append(self.headers["X-Request-ID"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(STREAM_ERROR)))
        self.end_headers()
        self.wfile.write(STREAM_ERROR)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def id_dropping_server() -> Iterator[_IdDroppingServer]:
    server = _IdDroppingServer(("127.0.0.1", 0), _StreamEndingInAnError)
    server.sent = []
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_error_inside_a_stream_has_the_request_id_sent(id_dropping_server: _IdDroppingServer) -> None:
    url = f"http://127.0.0.1:{id_dropping_server.server_port}"
    with Client(url) as client, pytest.raises(DeadlineError) as late:
        list(client.optimize_stream("himmelblau", x0=[1, 0]))
    assert (late.value.status, late.value.type) == (504, "deadline_exceeded")

    async def read_async() -> None:
        async with AsyncClient(url) as client:
            async for _ in client.optimize_stream("himmelblau", x0=[1, 0]):
                pass

    with pytest.raises(DeadlineError) as late_async:
        asyncio.run(read_async())
    assert id_dropping_server.sent[0] != id_dropping_server.sent[1]
    assert [late.value.request_id, late_async.value.request_id] == id_dropping_server.sent


# --- a small server: API keys, overload, time budgets --------------------------------------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One compute slot, no queue, Retry-After 1 s, a 3 s time budget, an API key; element and
    work limits high enough for a computation to run out of memory."""
    log = tmp_path_factory.mktemp("small") / "server.log"
    with running_server(
        log,
        GRADIENT_MAX_CONCURRENCY="1",
        GRADIENT_MAX_QUEUE="0",
        GRADIENT_RETRY_AFTER_S="1",
        GRADIENT_REQUEST_TIMEOUT_S="3",
        GRADIENT_API_KEYS=API_KEY,
        GRADIENT_MAX_ELEMENTS=str(10**13),
        GRADIENT_MAX_FLOPS=str(10**18),
    ) as (url, _process, _log):
        yield url


def test_api_keys(small_server: str) -> None:
    with Client(small_server) as anonymous, pytest.raises(UnauthorizedError) as refused:
        anonymous.info()
    assert refused.value.status == 401 and refused.value.type == "unauthorized"
    with Client(small_server, api_key="wrong") as wrong, pytest.raises(UnauthorizedError):
        wrong.info()
    with Client(small_server, api_key=API_KEY) as allowed:
        assert allowed.info()["limits"]["max_queue"] == 0


def test_overload_is_retried_after_what_retry_after_says(small_server: str) -> None:
    outcome: list[BaseException] = []

    def hold_the_slot() -> None:
        with Client(small_server, api_key=API_KEY, retries=0) as holder:
            try:
                holder.optimize("rosenbrock", **LONG_RUN)
            except GradientError as exc:
                outcome.append(exc)

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    try:
        wait_for("the long run to hold the slot", lambda: metric(small_server, "gradient_compute_running") == 1)
        with Client(small_server, api_key=API_KEY, retries=0) as impatient, pytest.raises(OverloadedError) as full:
            impatient.differentiate("sum(x ** 2)", {"x": [1.0, 2.0]})
        assert (full.value.status, full.value.type, full.value.retry_after) == (503, "overloaded", 1.0)
        assert full.value.request_id is not None

        answers: list[tuple[float, int, str]] = []
        with Client(small_server, api_key=API_KEY, retries=20) as patient:
            patient.http.event_hooks["response"].append(
                lambda r: answers.append((time.monotonic(), r.status_code, r.request.headers["x-request-id"]))
            )
            started = time.monotonic()
            result = patient.differentiate("sum(x ** 2)", {"x": [1.0, 2.0]})
        assert result.grad is not None
        np.testing.assert_array_equal(result.grad["x"], [2.0, 4.0])
        statuses = [status for _, status, _ in answers]
        assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses[:-1]) == {503}
        assert len({request_id for *_, request_id in answers}) == 1  # one call, one request id
        waits = [later - earlier for (earlier, *_), (later, *_) in itertools.pairwise(answers)]
        assert all(wait >= 0.95 for wait in waits), waits  # Retry-After: 1
        assert answers[-1][0] - started >= 0.95
    finally:
        holder.join(timeout=60)
    # The long run itself ran out of its 3 s budget.
    assert len(outcome) == 1 and isinstance(outcome[0], DeadlineError)
    assert outcome[0].status == 504 and outcome[0].type == "deadline_exceeded"


OVERCOMMIT = Path("/proc/sys/vm/overcommit_memory")


@pytest.mark.skipif(
    not OVERCOMMIT.exists() or OVERCOMMIT.read_text().strip() == "1",
    reason="needs a kernel that refuses an allocation beyond its memory (Linux, vm.overcommit_memory 0 or 2)",
)
def test_running_out_of_memory_is_not_retried(small_server: str) -> None:
    """x * y is a 10^6 x 10^6 float32 matrix, 4 TB: the server's allocator refuses it at once, a
    503 out_of_memory with Retry-After 1, which each retry would meet again."""
    n = 1_000_000
    inputs = {"x": np.zeros((n, 1), np.float32), "y": np.zeros(n, np.float32)}
    attempts: list[httpx.Request] = []
    with Client(small_server, api_key=API_KEY, retries=3) as client:
        client.http.event_hooks["request"].append(attempts.append)
        started = time.monotonic()
        with pytest.raises(OverloadedError) as oom:
            client.differentiate("sum(x * y)", inputs, derivatives=[], device="cpu")
    assert (oom.value.status, oom.value.type, oom.value.retry_after) == (503, "out_of_memory", 1.0)
    assert len(attempts) == 1 and time.monotonic() - started < 1.0  # no wait, no second try
    assert oom.value.request_id == attempts[0].headers["x-request-id"]


def test_the_client_timeout_is_not_retried(small_server: str) -> None:
    attempts: list[httpx.Request] = []
    with Client(small_server, api_key=API_KEY, timeout=0.5, retries=3) as client:
        client.http.event_hooks["request"].append(attempts.append)
        with pytest.raises(ClientTimeoutError) as late:
            client.optimize("rosenbrock", **LONG_RUN)
    assert late.value.type == "timeout" and late.value.status is None and len(attempts) == 1
    wait_for("the run to end at its budget", lambda: metric(small_server, "gradient_compute_running") == 0)


# --- the pure parts ----------------------------------------------------------------------------


def test_wire_encoding() -> None:
    small = to_wire(prepare([1.0, math.nan, -math.inf, math.inf], Kind.FLOAT, "x"), "float32")
    assert small == [1.0, "NaN", "-Infinity", "Infinity"]
    assert to_wire(prepare(2.5, Kind.FLOAT, "x"), "float64") == 2.5
    assert to_wire(prepare([[1, 2], [3, 4]], Kind.FLOAT, "x"), "float32") == [[1.0, 2.0], [3.0, 4.0]]
    large = np.arange(TINY + 1, dtype=np.float64) / 3
    encoded = to_wire(prepare(large, Kind.FLOAT, "x"), "float32")
    assert encoded["shape"] == [TINY + 1] and encoded["dtype"] == "float32"
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(encoded["base64"]), "<f4"), large.astype(np.float32))
    beyond = to_wire(prepare(np.full(TINY + 1, 1e300), Kind.FLOAT, "x"), "float32")  # no overflow warning
    assert np.isinf(np.frombuffer(base64.b64decode(beyond["base64"]), "<f4")).all()
    assert to_wire(prepare(np.array([-1e300]), Kind.FLOAT, "x"), "float32") == ["-Infinity"]
    indices = to_wire(prepare([3], Kind.INDEX, "target"), "float32")
    assert indices == {"shape": [1], "dtype": "int64", "base64": base64.b64encode(np.int64(3).tobytes()).decode()}
    assert to_wire(prepare(np.array([1, 2]), Kind.INPUT, "x"), "float32")["dtype"] == "int64"
    assert to_wire(prepare([1, 2], Kind.INPUT, "x"), "float32") == [1.0, 2.0]
    assert to_wire(prepare(np.array([True, False]), Kind.FLOAT, "x"), "float32") == [1.0, 0.0]
    with pytest.raises(TypeError, match="real numbers"):
        prepare(np.array([1j]), Kind.FLOAT, "x")
    with pytest.raises(TypeError, match="rectangular"):
        prepare([[1.0], [2.0, 3.0]], Kind.FLOAT, "x")


def test_wire_decoding() -> None:
    assert from_wire(["NaN", 1.5, "Infinity", "-Infinity"], "float32").dtype == np.float32
    np.testing.assert_array_equal(
        from_wire([["NaN", 1.5], [2, "-Infinity"]], "float64"), [[math.nan, 1.5], [2, -math.inf]]
    )
    np.testing.assert_array_equal(from_wire("NaN", "float64"), math.nan)
    values = np.array([[1.0, math.nan], [math.inf, -2.0]])
    encoded = {"shape": [2, 2], "dtype": "float64", "base64": base64.b64encode(values.tobytes()).decode()}
    decoded = from_wire(encoded, "float32")  # an encoded tensor keeps its own dtype
    assert decoded.dtype == np.float64 and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, values)
    empty = from_wire({"shape": [0, 3], "dtype": "int64", "base64": ""}, "float32")
    assert empty.shape == (0, 3) and empty.dtype == np.int64


def test_dtype_choice() -> None:
    def chosen(*values: Any) -> str:
        return choose_dtype(None, [prepare(value, Kind.FLOAT, "x") for value in values])

    assert chosen([1.0], 2.0) == "float32"
    assert chosen(np.float64(2.0)) == "float64"
    assert chosen(np.array([1.0], dtype=np.float32), np.array([1.0])) == "float64"
    assert chosen(np.array([1], dtype=np.int64)) == "float32"
    assert choose_dtype("float64", []) == "float64"
    with pytest.raises(ValueError, match="dtype"):
        choose_dtype("float16", [])


def test_event_stream_parser() -> None:
    text = (
        ": a heartbeat\n"
        'event: progress\ndata: {"a":\ndata:  1}\n\n'
        "event: result\r\ndata:x\r\nid: 7\r\n\r\n"
        "data: plain\rdata: second line\r\r"
        "event: nothing\n\n"  # no data: not dispatched
        "event: unfinished\ndata: dropped at the end\n"
    )
    expected = [
        Event("progress", '{"a":\n 1}'),
        Event("result", "x", "7"),
        Event("message", "plain\nsecond line", "7"),
    ]
    assert EventParser().feed(text) == expected
    for size in (1, 2, 3, 7):  # every chunking, a CR LF split across chunks included
        parser = EventParser()
        events = [event for start in range(0, len(text), size) for event in parser.feed(text[start : start + size])]
        assert events + parser.flush() == expected, size
    parser = EventParser()
    assert parser.feed("data: last\n\r") == []
    assert parser.flush() == [Event("message", "last")]


def test_retry_policy() -> None:
    policy = RetryPolicy(retries=2)
    assert policy.wait_after_status(0, 400, None) is None
    assert policy.wait_after_status(0, 503, 1.0, "overloaded") == pytest.approx(1.05, abs=0.051)
    assert policy.wait_after_status(2, 503, 1.0, "overloaded") is None  # the retries are spent
    assert policy.wait_after_status(0, 429, 3600.0) == pytest.approx(policy.max_retry_after_s, rel=0.11)
    # A 503 is retried only for a full service: not for running out of memory, nor without a type.
    for error_type in ("out_of_memory", "device_out_of_memory", "http_error", None):
        assert policy.wait_after_status(0, 503, 1.0, error_type) is None, error_type
    assert policy.wait_after_status(0, 429, None, "http_error") is not None
    waits = [policy.backoff(attempt) for attempt in range(12)]
    assert all(0 < wait <= policy.max_backoff_s for wait in waits) and waits[-1] >= policy.max_backoff_s / 2
    assert policy.wait_after_exception(0, httpx.ConnectError("refused")) is not None
    assert policy.wait_after_exception(0, httpx.ReadTimeout("slow")) is None
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 1.5 ") == 1.5 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None


def error_reply(status: int, error_type: str, request_id: str = "sent") -> _Reply:
    """An error answer as the shared core receives it, with ``Retry-After: 1``."""
    content = json.dumps({"error": {"type": error_type, "message": "m"}}).encode()
    return _Reply(status, httpx.Headers({"Retry-After": "1"}), content, httpx.Response(status), request_id)


def test_the_core_retries_a_busy_service_and_raises_out_of_memory_at_once() -> None:
    settings = _Settings("http://service.test", None, 1.0, RetryPolicy(retries=3), 1)
    for error_type in ("out_of_memory", "device_out_of_memory"):
        exchange = _exchange(settings, _calls.info())
        send = next(exchange)
        assert isinstance(send, _Send)
        with pytest.raises(OverloadedError) as oom:
            exchange.send(error_reply(503, error_type, send.request_id))
        assert (oom.value.status, oom.value.type, oom.value.retry_after) == (503, error_type, 1.0)
        assert oom.value.request_id == send.request_id
    exchange = _exchange(settings, _calls.info())
    send = next(exchange)
    for status, error_type in ((503, "overloaded"), (429, "overloaded"), (429, "too_many_requests")):
        wait = exchange.send(error_reply(status, error_type))
        assert isinstance(wait, _Sleep) and wait.seconds >= 1.0
        assert exchange.send(None) == send  # the same request again, with the same id
    with pytest.raises(OverloadedError) as spent:  # the fourth answer: the 3 retries are spent
        exchange.send(error_reply(503, "overloaded"))
    assert spent.value.type == "overloaded"
