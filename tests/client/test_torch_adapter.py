"""gradient_client.torch.remote against the real service: first and second derivatives by
torch.autograd.gradcheck and gradgradcheck, and against the same formulas written in local torch;
a remote formula inside a larger local graph; how many requests each pass costs; dtypes, devices
and constants."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradient_client import Client, GradientError
from gradient_client.torch import RemoteFunction, ThirdOrderError, remote

Tensor = torch.Tensor


@dataclass(frozen=True)
class Case:
    """A formula with its inputs' shapes, its constants, and the same formula in local torch."""

    id: str
    expression: str
    shapes: dict[str, tuple[int, ...]]
    local: Callable[..., Tensor]
    constants: dict[str, Tensor]


def _constants() -> dict[str, dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return {
        "y": {"y": torch.rand(4, 2, generator=generator, dtype=torch.float64)},
        "t": {"t": torch.tensor([0, 2, 1], dtype=torch.int64)},
    }


CONSTANTS = _constants()

CASES = [
    Case(
        "scalar",
        "sum(a * sin(b)) + sum(a ** 3) * mean(b)",
        {"a": (3,), "b": (3,)},
        lambda a, b: torch.sum(a * torch.sin(b)) + torch.sum(a**3) * torch.mean(b),
        {},
    ),
    Case(
        "vector",
        "a * sin(b) + a ** 2 * exp(c)",
        {"a": (3,), "b": (3,), "c": ()},
        lambda a, b, c: a * torch.sin(b) + a**2 * torch.exp(c),
        {},
    ),
    Case(
        "matrix",
        "tanh(w @ x + b)",
        {"w": (3, 2), "x": (2,), "b": (3,)},
        lambda w, x, b: torch.tanh(w @ x + b),
        {},
    ),
    Case(
        "perceptron",
        "o = sigmoid(x @ w.T)\nmse(o, y)",
        {"x": (4, 3), "w": (2, 3)},
        lambda x, w: F.mse_loss(torch.sigmoid(x @ w.T), CONSTANTS["y"]["y"]),
        CONSTANTS["y"],
    ),
    Case(
        "loss",
        "cross_entropy(z @ w, t) + 0.1 * sum(w ** 2)",
        {"z": (3, 2), "w": (2, 3)},
        lambda z, w: F.cross_entropy(z @ w, CONSTANTS["t"]["t"]) + 0.1 * torch.sum(w**2),
        CONSTANTS["t"],
    ),
]


def inputs_of(case: Case, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(
        (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype).requires_grad_()
        for shape in case.shapes.values()
    )


def total(tensors: Iterable[Tensor]) -> Tensor:
    """The sum of every element of every tensor."""
    return torch.stack([t.sum() for t in tensors]).sum()


class Requests:
    """The bodies of the requests a client sent (an httpx event hook)."""

    def __init__(self, client: Client) -> None:
        self.bodies: list[dict[str, Any]] = []
        client.http.event_hooks["request"].append(self._record)

    def _record(self, request: httpx.Request) -> None:
        self.bodies.append(json.loads(request.read()))

    def take(self) -> list[dict[str, Any]]:
        bodies, self.bodies = self.bodies, []
        return bodies


@pytest.fixture
def requests(client: Client) -> Requests:
    return Requests(client)


def remote_of(client: Client, case: Case) -> RemoteFunction:
    return remote(client, case.expression, list(case.shapes), case.constants)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_gradcheck_and_gradgradcheck(client: Client, case: Case) -> None:
    f = remote_of(client, case)
    xs = inputs_of(case)
    assert torch.autograd.gradcheck(f, xs)
    assert torch.autograd.gradgradcheck(f, xs)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_value_first_and_second_derivatives_equal_local_torch(client: Client, case: Case) -> None:
    f = remote_of(client, case)
    xs = inputs_of(case, seed=1)
    local_xs = tuple(x.detach().clone().requires_grad_() for x in xs)
    value, local = f(*xs), case.local(*local_xs)
    torch.testing.assert_close(value, local, rtol=1e-10, atol=1e-12)
    generator = torch.Generator().manual_seed(2)
    g = torch.rand(value.shape, generator=generator, dtype=torch.float64)
    directions = [torch.rand(x.shape, generator=generator, dtype=torch.float64) for x in xs]

    def first_and_second(out: Tensor, ins: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        grads = torch.autograd.grad(out, ins, g, create_graph=True)
        along = total(gr * d for gr, d in zip(grads, directions, strict=True))
        return grads, torch.autograd.grad(along, ins)

    grads, second = first_and_second(value, xs)
    local_grads, local_second = first_and_second(local, local_xs)
    torch.testing.assert_close(grads, local_grads, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(second, local_second, rtol=1e-10, atol=1e-12)


def test_a_remote_formula_inside_a_local_graph_has_the_local_derivatives(client: Client) -> None:
    # A local layer before and after the service's, against the same network all in local torch.
    layer = remote(client, "sigmoid(h @ w.T)", ["h", "w"])

    def parameters() -> list[Tensor]:
        generator = torch.Generator().manual_seed(3)
        shapes = [(5, 3), (3, 4), (2, 4), (2, 1)]  # x, w1, w2, v
        return [torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in shapes]

    def network(inner: Callable[[Tensor, Tensor], Tensor], x: Tensor, w1: Tensor, w2: Tensor, v: Tensor) -> Tensor:
        h = torch.tanh(x @ w1)  # local, before
        o = inner(h, w2)  # remote, or local
        return ((o @ v - 0.5) ** 2).mean() + 0.01 * (w1**2).sum()  # local, after

    remote_params, local_params = parameters(), parameters()
    loss = network(layer, *remote_params)
    local_loss = network(lambda h, w: torch.sigmoid(h @ w.T), *local_params)
    torch.testing.assert_close(loss, local_loss, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(loss, remote_params, create_graph=True)
    local_grads = torch.autograd.grad(local_loss, local_params, create_graph=True)
    torch.testing.assert_close(grads, local_grads, rtol=1e-10, atol=1e-12)
    # Second derivatives: the gradient of the gradient's squared norm (a Hessian-vector product).
    second = torch.autograd.grad(total(g**2 for g in grads), remote_params)
    local_second = torch.autograd.grad(total(g**2 for g in local_grads), local_params)
    torch.testing.assert_close(second, local_second, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda *p: network(layer, *p), tuple(remote_params))


def test_each_pass_is_one_request(client: Client, requests: Requests) -> None:
    scalar = remote_of(client, CASES[0])
    xs = inputs_of(CASES[0])
    loss = scalar(*xs)
    (body,) = requests.take()  # a scalar's gradient comes with its value
    assert body["derivatives"] == ["grad"]
    assert body["wrt"] == ["a", "b"]
    grads = torch.autograd.grad(loss, xs, create_graph=True)
    assert requests.take() == []  # ... so its backward pass sends nothing
    torch.autograd.grad(total(grads), xs)
    (body,) = requests.take()  # double backward: one request
    assert body["derivatives"] == ["hvp"]
    assert set(body["tangents"]) == {"a", "b"}
    assert body["grad_output"] == 1.0

    vector = remote_of(client, CASES[1])
    xs = inputs_of(CASES[1])
    for _ in range(2):  # the first call learns that the value is not a scalar
        out = vector(*xs)
        requests.take()
    out = vector(*xs)
    (body,) = requests.take()
    assert body["derivatives"] == []
    g = torch.ones_like(out, requires_grad=True)
    grads = torch.autograd.grad(out, xs, g, create_graph=True)
    (body,) = requests.take()
    assert body["derivatives"] == ["grad"]
    assert body["grad_output"] == [1.0, 1.0, 1.0]
    torch.autograd.grad(total(grads), [*xs, g])
    (body,) = requests.take()  # both parts of the double backward in one request
    assert body["derivatives"] == ["jvp", "hvp"]


def test_nothing_is_differentiated_that_torch_does_not_ask_for(client: Client, requests: Requests) -> None:
    f = remote_of(client, CASES[0])
    a, b = inputs_of(CASES[0])
    with torch.no_grad():
        f(a, b)
    (body,) = requests.take()
    assert body["derivatives"] == []
    (grad_a,) = torch.autograd.grad(f(a, b.detach()), [a])
    (body,) = requests.take()
    assert body["wrt"] == ["a"]
    torch.testing.assert_close(grad_a, torch.sin(b.detach()) + 3 * a.detach() ** 2 * b.detach().mean())


def test_constants_are_sent_and_never_differentiated(client: Client, requests: Requests) -> None:
    case = CASES[4]
    f = remote_of(client, case)
    z, w = inputs_of(case)
    f(z, w).backward()
    (body,) = requests.take()
    assert body["wrt"] == ["z", "w"]
    assert body["inputs"]["t"]["dtype"] == "int64"
    assert z.grad is not None
    assert w.grad is not None
    with pytest.raises(ValueError, match="both inputs and constants"):
        remote(client, "x + y", ["x", "y"], {"y": 1.0})


def test_the_dtype_follows_the_tensors(client: Client, requests: Requests) -> None:
    f = remote_of(client, CASES[1])
    xs32 = inputs_of(CASES[1], dtype=torch.float32)
    out = f(*xs32)
    assert out.dtype == torch.float32
    grads = torch.autograd.grad(out.sum(), xs32)
    assert all(g.dtype == torch.float32 for g in grads)
    assert {body["dtype"] for body in requests.take()} == {"float32"}
    # One float64 input: the request is float64, each gradient in its input's dtype.
    a, b, c = xs32
    c64 = c.detach().double().requires_grad_()
    out = f(a, b, c64)
    assert out.dtype == torch.float64
    grads = torch.autograd.grad(out.sum(), [a, b, c64])
    assert [g.dtype for g in grads] == [torch.float32, torch.float32, torch.float64]
    assert {body["dtype"] for body in requests.take()} == {"float64"}


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_a_float64_constant_makes_the_request_float64(client: Client, requests: Requests, kind: str) -> None:
    """(x * c) - (x * d) with c = 1 + 1e-10 is 1e-10 in float64, 0 in float32 (c rounds to 1)."""
    c = np.array([1 + 1e-10]) if kind == "numpy" else torch.tensor([1 + 1e-10], dtype=torch.float64)
    f = remote(client, "sum(x * c) - sum(x * d)", ["x"], {"c": c, "d": 1.0})
    x = torch.ones(1, dtype=torch.float32, requires_grad=True)
    value = f(x)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(1e-10, rel=1e-5)
    (grad,) = torch.autograd.grad(value, [x])
    assert grad.dtype == torch.float32
    assert {body["dtype"] for body in requests.take()} == {"float64"}
    # A Python number has no dtype of its own: it does not choose.
    remote(client, "sum(x * d)", ["x"], {"d": 1.0})(x)
    assert {body["dtype"] for body in requests.take()} == {"float32"}


def test_third_derivatives_are_refused(client: Client) -> None:
    f = remote_of(client, CASES[0])
    xs = inputs_of(CASES[0])
    grads = torch.autograd.grad(f(*xs), xs, create_graph=True)
    second = torch.autograd.grad(grads[0].sum(), xs, create_graph=True)
    with pytest.raises(ThirdOrderError, match="differentiates twice at most"):
        torch.autograd.grad(second[0].sum(), xs)
    # Also where a local term would have hidden a missing third derivative.
    with pytest.raises(ThirdOrderError, match="differentiates twice at most"):
        torch.autograd.grad(second[1].sum() + (xs[0] ** 4).sum(), xs)


def test_service_errors_reach_the_caller(client: Client) -> None:
    f = remote(client, "a +* b", ["a", "b"])
    with pytest.raises(GradientError):
        f(torch.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match="expected 2 tensors"):
        remote(client, "a + b", ["a", "b"])(torch.ones(2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tensors_on_a_gpu_come_back_on_their_device(client: Client) -> None:
    case = CASES[2]
    f = remote_of(client, case)
    xs = tuple(x.detach().cuda().requires_grad_() for x in inputs_of(case))
    out = f(*xs)
    assert out.device == xs[0].device
    grads = torch.autograd.grad(out.sum(), xs, create_graph=True)
    assert all(g.device == xs[0].device for g in grads)
    second = torch.autograd.grad(total(grads), xs)
    assert all(s.device == xs[0].device for s in second)
    local = case.local(*(x.detach().cpu() for x in xs))
    torch.testing.assert_close(out.cpu(), local, rtol=1e-10, atol=1e-12)


def test_importing_the_client_imports_neither_torch_nor_jax() -> None:
    code = "import sys, gradient_client._adapters; print(sorted({'torch', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
